package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
)

// manifest is one object read from a file, with where it came from for error messages.
type manifest struct {
	obj    *api.Object
	source string
}

// readManifests reads objects from files, directories (their .yaml, .yml and .json files)
// or "-" for standard input. Every document must be a known kind; the first problem is
// reported with its file and document number, before anything is sent to the server.
func readManifests(paths []string, recursive bool, stdin io.Reader) ([]manifest, error) {
	var out []manifest
	for _, p := range paths {
		if p == "-" {
			ms, err := parseManifests("<stdin>", stdin)
			if err != nil {
				return nil, err
			}
			out = append(out, ms...)
			continue
		}
		files, err := manifestFiles(p, recursive)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			fh, err := os.Open(f)
			if err != nil {
				return nil, err
			}
			ms, err := parseManifests(f, fh)
			fh.Close()
			if err != nil {
				return nil, err
			}
			out = append(out, ms...)
		}
	}
	return out, nil
}

func manifestFiles(p string, recursive bool) ([]string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{p}, nil
	}
	var files []string
	err = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != p && !recursive {
				return filepath.SkipDir
			}
			return nil
		}
		switch strings.ToLower(filepath.Ext(path)) {
		case ".yaml", ".yml", ".json":
			files = append(files, path)
		}
		return nil
	})
	sort.Strings(files)
	if err == nil && len(files) == 0 {
		err = fmt.Errorf("%s: no .yaml, .yml or .json files", p)
	}
	return files, err
}

func parseManifests(source string, r io.Reader) ([]manifest, error) {
	yr := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var out []manifest
	for doc := 1; ; doc++ {
		raw, err := yr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		where := fmt.Sprintf("%s: document %d", source, doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue
		}
		js, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: malformed YAML: %w", where, err)
		}
		objs, err := decodeManifest(js)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		for _, o := range objs {
			out = append(out, manifest{obj: o, source: where})
		}
	}
	return out, nil
}

func stripComments(b []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

// decodeManifest decodes one document: an object, or a List of objects.
func decodeManifest(js []byte) ([]*api.Object, error) {
	var head struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Items      []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return nil, fmt.Errorf("not an object: %w", err)
	}
	if head.Kind == "List" || strings.HasSuffix(head.Kind, "List") && head.Items != nil {
		var out []*api.Object
		for i, it := range head.Items {
			objs, err := decodeManifest(it)
			if err != nil {
				return nil, fmt.Errorf("item %d: %w", i, err)
			}
			out = append(out, objs...)
		}
		return out, nil
	}
	if head.Kind == "" {
		return nil, errors.New("missing kind")
	}
	if api.IsCoreV1Secret(head.APIVersion, head.Kind) {
		// Kubernetes' Secret, as Fleet users write git and Helm credentials.
		o, err := api.SecretFromCoreV1(js)
		if err != nil {
			return nil, err
		}
		return []*api.Object{o}, nil
	}
	if head.APIVersion == "" {
		return nil, errors.New("missing apiVersion")
	}
	if k, ok := api.LookupKind(head.Kind); !ok || k.Kind != head.Kind {
		return nil, fmt.Errorf("unknown kind %q (apiVersion %s): Flotilla serves %s", head.Kind, head.APIVersion, kindList())
	}
	if !api.KnownAPIVersion(head.APIVersion, head.Kind) {
		return nil, fmt.Errorf("kind %s in unsupported apiVersion %q (use %s)", head.Kind, head.APIVersion, api.APIVersion)
	}
	var o api.Object
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		return nil, fmt.Errorf("malformed %s: %s", head.Kind, strings.TrimPrefix(err.Error(), "json: "))
	}
	return []*api.Object{&o}, nil
}

func kindList() string {
	var n []string
	for _, k := range api.Kinds {
		n = append(n, k.Kind)
	}
	return strings.Join(n, ", ")
}
