// Package ldaptest starts a real OpenLDAP server (Debian's slapd) for tests: its own
// configuration, database and certificates in a temporary directory, listening on loopback
// ports with ldap:// (StartTLS offered) and ldaps://. Imported only by tests.
package ldaptest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

// The directory every server holds.
const (
	Suffix       = "dc=example,dc=org"
	RootDN       = "cn=admin," + Suffix
	RootPassword = "root-secret-for-tests"
)

// Server is a running slapd.
type Server struct {
	// URL is ldap://127.0.0.1:PORT (StartTLS offered); LDAPSURL is ldaps://127.0.0.1:PORT.
	URL, LDAPSURL string
	// CAFile verifies the server's certificate (made for 127.0.0.1).
	CAFile string

	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	stop sync.Once
}

// Start starts a slapd with an empty directory (only its suffix and root entry) and stops
// it when the test ends. Without slapd the test skips, or fails when CI=true.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, modules, schema, err := find()
	if err != nil {
		msg := fmt.Sprintf("OpenLDAP's slapd is needed: %v (install Debian's slapd package: apt-get install slapd ldap-utils)", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s := &Server{dir: t.TempDir(), done: make(chan struct{})}
	if err := s.start(bin, modules, schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	s.Add(t, Suffix, map[string][]string{"objectClass": {"dcObject", "organization"}, "dc": {"example"}, "o": {"Example"}})
	return s
}

func find() (bin, modules, schema string, err error) {
	bin, err = exec.LookPath("slapd")
	if err != nil {
		bin = "/usr/sbin/slapd"
		if _, err := os.Stat(bin); err != nil {
			return "", "", "", errors.New("slapd not found in PATH or /usr/sbin")
		}
	}
	// Debian builds the database backends and overlays as modules.
	for _, d := range []string{os.Getenv("FLOTILLA_SLAPD_MODULES"), "/usr/lib/ldap", "/usr/lib64/openldap", "/usr/lib/openldap"} {
		if d != "" && exists(filepath.Join(d, "back_mdb.so")) {
			modules = d
			break
		}
	}
	if modules == "" {
		return "", "", "", errors.New("slapd's back_mdb module not found (set FLOTILLA_SLAPD_MODULES to its directory)")
	}
	for _, d := range []string{"/etc/ldap/schema", "/etc/openldap/schema"} {
		if exists(filepath.Join(d, "inetorgperson.schema")) {
			schema = d
		}
	}
	if schema == "" {
		return "", "", "", errors.New("OpenLDAP's schema files not found in /etc/ldap/schema")
	}
	return bin, modules, schema, nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) start(bin, modules, schema string) error {
	if err := s.makeCerts(); err != nil {
		return fmt.Errorf("making certificates: %w", err)
	}
	data := filepath.Join(s.dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return err
	}
	memberof := ""
	if exists(filepath.Join(modules, "memberof.so")) {
		memberof = "moduleload memberof\n"
	}
	conf := fmt.Sprintf(`include %[1]s/core.schema
include %[1]s/cosine.schema
include %[1]s/inetorgperson.schema
include %[1]s/nis.schema
modulepath %[2]s
moduleload back_mdb
%[3]spidfile %[4]s/slapd.pid
argsfile %[4]s/slapd.args
TLSCACertificateFile %[4]s/ca.pem
TLSCertificateFile %[4]s/cert.pem
TLSCertificateKeyFile %[4]s/key.pem
database mdb
suffix "%[5]s"
rootdn "%[6]s"
rootpw %[7]s
directory %[8]s
maxsize 67108864
`, schema, modules, memberof, s.dir, Suffix, RootDN, RootPassword, data)
	if memberof != "" {
		conf += "overlay memberof\n"
	}
	// Users may check their password and read entries once bound; anonymous clients may do
	// nothing else, as a directory should be set up.
	conf += `access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
`
	cf := filepath.Join(s.dir, "slapd.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		return err
	}
	p1, err := freePort()
	if err != nil {
		return err
	}
	p2, err := freePort()
	if err != nil {
		return err
	}
	s.URL = fmt.Sprintf("ldap://127.0.0.1:%d", p1)
	s.LDAPSURL = fmt.Sprintf("ldaps://127.0.0.1:%d", p2)
	logf, err := os.Create(filepath.Join(s.dir, "slapd.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	// -d keeps slapd in the foreground, as our child; level 256 (stats) logs every
	// operation, which tests may count (Log).
	s.cmd = exec.Command(bin, "-f", cf, "-h", s.URL+"/ "+s.LDAPSURL+"/", "-d", "256")
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("starting slapd: %w", err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	for range 200 {
		select {
		case <-s.done:
			log, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("slapd exited at start: %s\n%s", s.cmd.ProcessState, log)
		default:
		}
		if c, err := goldap.DialURL(s.URL); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.Stop()
	return errors.New("slapd did not accept connections within 10s")
}

// Stop stops slapd (the directory goes down); the test's end calls it too.
func (s *Server) Stop() {
	s.stop.Do(func() {
		s.cmd.Process.Kill()
		<-s.done
	})
}

// Add adds an entry as the directory's root.
func (s *Server) Add(t testing.TB, dn string, attrs map[string][]string) {
	t.Helper()
	c, err := goldap.DialURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(RootDN, RootPassword); err != nil {
		t.Fatal(err)
	}
	req := goldap.NewAddRequest(dn, nil)
	names := make([]string, 0, len(attrs))
	for k := range attrs {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		req.Attribute(k, attrs[k])
	}
	if err := c.Add(req); err != nil {
		t.Fatalf("adding %s: %v", dn, err)
	}
}

// Delete removes an entry as the directory's root.
func (s *Server) Delete(t testing.TB, dn string) {
	t.Helper()
	s.root(t, func(c *goldap.Conn) error { return c.Del(goldap.NewDelRequest(dn, nil)) })
}

// RemoveMember takes a member DN out of a group as the directory's root.
func (s *Server) RemoveMember(t testing.TB, groupDN, memberDN string) {
	t.Helper()
	s.root(t, func(c *goldap.Conn) error {
		req := goldap.NewModifyRequest(groupDN, nil)
		req.Delete("member", []string{memberDN})
		return c.Modify(req)
	})
}

// root runs f on a connection bound as the directory's root.
func (s *Server) root(t testing.TB, f func(*goldap.Conn) error) {
	t.Helper()
	c, err := goldap.DialURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(RootDN, RootPassword); err != nil {
		t.Fatal(err)
	}
	if err := f(c); err != nil {
		t.Fatal(err)
	}
}

// AddUser adds an inetOrgPerson with a uid under ou=people, creating that OU on first use,
// and returns its DN.
func (s *Server) AddUser(t testing.TB, uid, password string) string {
	t.Helper()
	s.ensureOU(t, "people")
	dn := fmt.Sprintf("uid=%s,ou=people,%s", goldap.EscapeDN(uid), Suffix)
	s.Add(t, dn, map[string][]string{
		"objectClass": {"inetOrgPerson"}, "uid": {uid}, "cn": {uid}, "sn": {uid},
		"userPassword": {password},
	})
	return dn
}

// AddGroup adds a group under ou=groups that is both a groupOfNames (member: DNs) and a
// posixGroup-like memberUid list, so either kind of group filter finds it.
func (s *Server) AddGroup(t testing.TB, cn string, memberDNs, memberUIDs []string) string {
	t.Helper()
	s.ensureOU(t, "groups")
	dn := fmt.Sprintf("cn=%s,ou=groups,%s", goldap.EscapeDN(cn), Suffix)
	attrs := map[string][]string{"objectClass": {"groupOfNames", "extensibleObject"}, "cn": {cn}, "member": memberDNs}
	if len(memberUIDs) > 0 {
		attrs["memberUid"] = memberUIDs
	}
	s.Add(t, dn, attrs)
	return dn
}

func (s *Server) ensureOU(t testing.TB, ou string) {
	t.Helper()
	c, err := goldap.DialURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(RootDN, RootPassword); err != nil {
		t.Fatal(err)
	}
	req := goldap.NewAddRequest(fmt.Sprintf("ou=%s,%s", ou, Suffix), nil)
	req.Attribute("objectClass", []string{"organizationalUnit"})
	req.Attribute("ou", []string{ou})
	if err := c.Add(req); err != nil && !goldap.IsErrorWithCode(err, goldap.LDAPResultEntryAlreadyExists) {
		t.Fatal(err)
	}
}

// makeCerts writes a CA and a server certificate for 127.0.0.1 signed by it.
func (s *Server) makeCerts() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test LDAP CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	s.CAFile = filepath.Join(s.dir, "ca.pem")
	for name, b := range map[string]*pem.Block{
		"ca.pem":   {Type: "CERTIFICATE", Bytes: caDER},
		"cert.pem": {Type: "CERTIFICATE", Bytes: der},
		"key.pem":  {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(s.dir, name), pem.EncodeToMemory(b), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// Log returns what slapd logged: errors, and a line per operation ("conn=1001 op=1 BIND
// dn=... method=128", "SRCH base=...").
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "slapd.log"))
	return strings.TrimSpace(string(b))
}
