package apiserver

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
)

// Messages of the body refusals, kept here so that tests and docs/security.md quote them.
const (
	msgEmptyBody     = "empty request body: send one object"
	msgTrailingJSON  = "the request body holds more than one JSON value: send one object per request"
	msgMultiDocYAML  = "the request body holds more than one YAML document: send one object per request"
	msgUnsupportedCT = "unsupported Content-Type %q: use application/json or application/yaml"
	msgTooLargeRV    = "too large resource version: %d, current: %d; list again and watch from the list's resourceVersion"
)

// bodyIsYAML tells from a Content-Type how a body is encoded. No Content-Type means JSON, as
// it always has; anything neither JSON nor YAML is refused rather than guessed at.
func bodyIsYAML(ct string) (bool, error) {
	if strings.TrimSpace(ct) == "" {
		return false, nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false, statusErr(http.StatusUnsupportedMediaType, api.ReasonUnsupportedMediaType, fmt.Sprintf(msgUnsupportedCT, ct))
	}
	switch {
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		return false, nil
	case mt == "application/yaml" || mt == "application/x-yaml" || mt == "text/yaml" || strings.HasSuffix(mt, "+yaml"):
		return true, nil
	}
	return false, statusErr(http.StatusUnsupportedMediaType, api.ReasonUnsupportedMediaType, fmt.Sprintf(msgUnsupportedCT, ct))
}

// decodeObject decodes exactly one object from body: unknown top-level fields, a second JSON
// value after the first and a second YAML document are all refused.
func decodeObject(body []byte, isYAML bool) (*api.Object, error) {
	if isYAML {
		doc, err := oneYAMLDocument(body)
		if err != nil {
			return nil, err
		}
		if body, err = yaml.YAMLToJSON(doc); err != nil {
			return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, "malformed YAML: "+err.Error())
		}
	}
	if len(bytes.TrimSpace(body)) == 0 || bytes.Equal(bytes.TrimSpace(body), []byte("null")) {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, msgEmptyBody)
	}
	var obj api.Object
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&obj); err != nil {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, "malformed object: "+strings.TrimPrefix(err.Error(), "json: "))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, msgTrailingJSON)
	}
	return &obj, nil
}

// oneYAMLDocument returns the only non-empty document of a YAML stream. Documents holding
// nothing (a leading "---", comments only) do not count.
func oneYAMLDocument(body []byte) ([]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(body)))
	var found []byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, "malformed YAML: "+err.Error())
		}
		// The split above knows only "---" lines; a YAML parser also ends a document at
		// "..." and would silently keep only the first of "{…}\n{…}".
		n, err := yamlDocuments(doc)
		if err != nil {
			return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, "malformed YAML: "+err.Error())
		}
		if n == 0 {
			continue
		}
		if found != nil || n > 1 {
			return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, msgMultiDocYAML)
		}
		found = doc
	}
	if found == nil {
		return []byte("null"), nil
	}
	return found, nil
}

// yamlDocuments counts the non-empty documents of a YAML stream.
func yamlDocuments(data []byte) (int, error) {
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	n := 0
	for {
		var doc yamlv3.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
		if len(doc.Content) == 0 || (doc.Content[0].Kind == yamlv3.ScalarNode && doc.Content[0].Tag == "!!null") {
			continue
		}
		n++
	}
}
