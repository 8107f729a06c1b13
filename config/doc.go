// Package config reads bst-cache's TOML configuration: the user file, the
// project file and an explicit --config file, merged into one ordered list of
// caches. It is plain data plus validation: nothing here dials a server.
// Every error names the file, the line and the key, and wraps ErrInvalid.
package config
