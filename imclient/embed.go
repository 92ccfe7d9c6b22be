// Package imclient ships the browser client for imbroker nodes so that a Go
// service can serve it: the npm-style package in this directory
// (package.json, imclient.js, imclient.d.ts, README.md) embedded in the
// binary. Front ends built with a bundler install the same directory with
// npm instead; see README.md.
//
//	mux.Handle("/vendor/imclient/", http.StripPrefix("/vendor/imclient", imclient.Handler()))
//
// A page then maps the bare name to the served file with an import map,
// {"imports": {"imclient": "/vendor/imclient/imclient.js"}}, and imports
// { IMClient } from "imclient".
package imclient

import (
	"embed"
	"io/fs"
	"net/http"
)

// The files listed here are the ones package.json's "files" publishes; the
// package's tests check that the two lists agree.
//
//go:embed package.json imclient.js imclient.d.ts README.md
var files embed.FS

// FS returns the package's files at its root: package.json, imclient.js,
// imclient.d.ts and README.md.
func FS() fs.FS { return files }

// Handler serves the package's files, e.g. GET /imclient.js. Mount it under
// a prefix with http.StripPrefix.
func Handler() http.Handler { return http.FileServerFS(files) }
