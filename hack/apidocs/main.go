// Command apidocs writes the doc comments of package api as a Go map, which the API server's
// OpenAPI schemas take their descriptions from. Run by go generate in internal/apiserver.
package main

import (
	"flag"
	"fmt"
	"os"

	"flotilla.dev/internal/apidoc"
)

func main() {
	src := flag.String("src", "../../api", "directory of package api")
	out := flag.String("out", "zz_generated_apidocs.go", "file to write")
	pkg := flag.String("pkg", "apiserver", "package of the written file")
	name := flag.String("var", "apiDocs", "name of the map variable")
	flag.Parse()
	if err := run(*src, *out, *pkg, *name); err != nil {
		fmt.Fprintln(os.Stderr, "apidocs:", err)
		os.Exit(1)
	}
}

func run(src, out, pkg, name string) error {
	docs, err := apidoc.Docs(src)
	if err != nil {
		return err
	}
	b, err := apidoc.Source(pkg, name, apidoc.Generator, docs)
	if err != nil {
		return err
	}
	return os.WriteFile(out, b, 0o644)
}
