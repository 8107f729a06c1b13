// Package commands is bst-cache's command line: urfave/cli wiring that reads
// flags into options, loads the configuration and calls the packages that do
// the work. It holds no protocol or storage logic of its own.
package commands
