package firecracker

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
)

// TestModelReexported: every exported name of package model is also a
// name of package firecracker, so callers never need both imports.
func TestModelReexported(t *testing.T) {
	names := func(dir string, skip func(string) bool) map[string]bool {
		fset := token.NewFileSet()
		pkgs, err := parser.ParseDir(fset, dir, func(fi os.FileInfo) bool {
			return !strings.HasSuffix(fi.Name(), "_test.go") && !skip(fi.Name())
		}, 0)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, p := range pkgs {
			for _, f := range p.Files {
				for _, d := range f.Decls {
					switch d := d.(type) {
					case *ast.FuncDecl:
						if d.Recv == nil && d.Name.IsExported() {
							out[d.Name.Name] = true
						}
					case *ast.GenDecl:
						for _, s := range d.Specs {
							switch s := s.(type) {
							case *ast.TypeSpec:
								if s.Name.IsExported() {
									out[s.Name.Name] = true
								}
							case *ast.ValueSpec:
								for _, n := range s.Names {
									if n.IsExported() {
										out[n.Name] = true
									}
								}
							}
						}
					}
				}
			}
		}
		return out
	}
	model := names("model", func(string) bool { return false })
	here := names(".", func(name string) bool { return name != "model_alias.go" })
	for n := range model {
		if !here[n] {
			t.Errorf("model.%s is not re-exported in model_alias.go", n)
		}
	}
}
