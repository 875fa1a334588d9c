package resource

import (
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strings"
	"time"

	"flotilla.dev/api"
)

// Bounds of values the validator accepts.
const (
	// MaxTokenUses is ten times the largest fleet Flotilla is built for; a larger count is a
	// typo or a probe of the counter's arithmetic.
	MaxTokenUses = 10_000_000
	// MinPollingInterval keeps a GitRepo from polling in a tight loop: one of 1ns took a core
	// and wrote megabytes of log a minute.
	MinPollingInterval = time.Second
)

func validateToken(s any) []api.StatusCause {
	spec := s.(*api.RegistrationTokenSpec)
	var causes []api.StatusCause
	if spec.TTL != "" {
		if d, err := time.ParseDuration(spec.TTL); err != nil || d <= 0 {
			causes = append(causes, api.StatusCause{Field: "spec.ttl", Message: fmt.Sprintf("must be a positive duration such as 24h, not %q", spec.TTL)})
		}
	}
	if spec.MaxUses < 0 || spec.MaxUses > MaxTokenUses {
		causes = append(causes, api.StatusCause{Field: "spec.maxUses", Message: fmt.Sprintf("must be from 0 (unlimited) to %d, not %d", MaxTokenUses, spec.MaxUses)})
	}
	m := api.ObjectMeta{Name: "x", Namespace: "x", Labels: spec.Labels}
	for _, c := range validateMeta(&m) {
		c.Field = strings.Replace(c.Field, "metadata.labels", "spec.labels", 1)
		causes = append(causes, c)
	}
	if spec.Replace && spec.ClusterName == "" {
		causes = append(causes, api.StatusCause{Field: "spec.replace", Message: "needs spec.clusterName: only a token bound to one cluster may replace it"})
	}
	if spec.ClusterName != "" {
		for _, c := range validateMeta(&api.ObjectMeta{Name: spec.ClusterName, Namespace: "x"}) {
			c.Field = strings.Replace(c.Field, "metadata.name", "spec.clusterName", 1)
			causes = append(causes, c)
		}
	}
	return causes
}

// scpLike matches git's scp-style addresses: user@host:path.
var scpLike = regexp.MustCompile(`^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:.+$`)

func defaultGitRepo(s any) {
	spec := s.(*api.GitRepoSpec)
	// No branch default: without branch or revision the remote's default branch is followed.
	if spec.PollingInterval == "" {
		spec.PollingInterval = "15s"
	}
}

func validateGitRepo(s any) []api.StatusCause {
	spec := s.(*api.GitRepoSpec)
	var causes []api.StatusCause
	add := func(f, m string) { causes = append(causes, api.StatusCause{Field: f, Message: m}) }
	switch {
	case spec.Repo == "":
		add("spec.repo", "required")
	case scpLike.MatchString(spec.Repo):
	default:
		u, err := url.Parse(spec.Repo)
		if err != nil {
			add("spec.repo", "not a URL: "+err.Error())
		} else if u.Scheme != "https" && u.Scheme != "http" && u.Scheme != "ssh" && u.Scheme != "git" && u.Scheme != "file" {
			add("spec.repo", fmt.Sprintf("unsupported scheme %q (use https, http, ssh, git or user@host:path)", u.Scheme))
		}
	}
	if d, err := time.ParseDuration(spec.PollingInterval); err != nil || d < MinPollingInterval {
		add("spec.pollingInterval", fmt.Sprintf("must be a duration of at least %s such as 15s, not %q", MinPollingInterval, spec.PollingInterval))
	}
	if spec.ForceSyncGeneration < 0 {
		add("spec.forceSyncGeneration", fmt.Sprintf("must not be negative, not %d", spec.ForceSyncGeneration))
	}
	for i, p := range spec.Paths {
		if err := repoPath(p); err != nil {
			add(fmt.Sprintf("spec.paths[%d]", i), err.Error())
		}
	}
	for i, t := range spec.Targets {
		f := fmt.Sprintf("spec.targets[%d]", i)
		causes = append(causes, optionalSelector(f+".clusterSelector", t.ClusterSelector)...)
		causes = append(causes, optionalSelector(f+".clusterGroupSelector", t.ClusterGroupSelector)...)
	}
	return causes
}

// repoPath refuses paths that leave the repository.
func repoPath(p string) error {
	if p == "" {
		return fmt.Errorf("must not be empty")
	}
	if path.IsAbs(p) || strings.HasPrefix(p, "\\") {
		return fmt.Errorf("%q must be relative to the repository root", p)
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("%q is not a valid glob: %v", p, err)
	}
	for _, part := range strings.Split(path.Clean(p), "/") {
		if part == ".." {
			return fmt.Errorf("%q leaves the repository", p)
		}
	}
	return nil
}

func optionalSelector(field string, s *api.LabelSelector) []api.StatusCause {
	if s == nil {
		return nil
	}
	return selectorCauses(field, s)
}

var digest = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func validateBundle(s any) []api.StatusCause {
	spec := s.(*api.BundleSpec)
	var causes []api.StatusCause
	add := func(f, m string) { causes = append(causes, api.StatusCause{Field: f, Message: m}) }
	if spec.ContentHash != "" && !digest.MatchString(spec.ContentHash) {
		add("spec.contentHash", fmt.Sprintf("must be sha256:<64 hex digits>, not %q", spec.ContentHash))
	}
	for i, r := range spec.Resources {
		f := fmt.Sprintf("spec.resources[%d]", i)
		if r.Name == "" {
			add(f+".name", "required")
		} else if err := repoPath(r.Name); err != nil {
			add(f+".name", err.Error())
		}
		switch r.Encoding {
		case "", "base64", "base64+gz":
		default:
			add(f+".encoding", fmt.Sprintf("unsupported value %q (use base64 or base64+gz, or none)", r.Encoding))
		}
	}
	for i, t := range spec.Targets {
		f := fmt.Sprintf("spec.targets[%d]", i)
		causes = append(causes, optionalSelector(f+".clusterSelector", t.ClusterSelector)...)
		causes = append(causes, optionalSelector(f+".clusterGroupSelector", t.ClusterGroupSelector)...)
	}
	for i, t := range spec.TargetRestrictions {
		f := fmt.Sprintf("spec.targetRestrictions[%d]", i)
		causes = append(causes, optionalSelector(f+".clusterSelector", t.ClusterSelector)...)
		causes = append(causes, optionalSelector(f+".clusterGroupSelector", t.ClusterGroupSelector)...)
	}
	for i, d := range spec.DependsOn {
		f := fmt.Sprintf("spec.dependsOn[%d]", i)
		if d.Name == "" && d.Selector == nil {
			add(f, "needs a name or a selector")
		}
		causes = append(causes, optionalSelector(f+".selector", d.Selector)...)
	}
	causes = append(causes, spec.BundleDeploymentOptions.Validate("spec")...)
	for i := range spec.Targets {
		causes = append(causes, spec.Targets[i].BundleDeploymentOptions.Validate(fmt.Sprintf("spec.targets[%d]", i))...)
	}
	if rs := spec.RolloutStrategy; rs != nil {
		causes = append(causes, rs.Validate("spec.rolloutStrategy")...)
	}
	return causes
}
