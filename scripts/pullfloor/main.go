// Command pullfloor is the floor under a pull's CPU time (scripts/bench-pull,
// issue 21): it does what any client must do with the bytes a pull brings
// and nothing else. Every object of the store SRC is read into memory (one
// buffer used again: the kernel's copy out, as a socket read makes),
// hashed with SHA-256, and written into a fresh store DEST as a pull
// writes it: an unnamed file (O_TMPFILE) linked by its descriptor under
// its hash in a fan-out directory, and one syncfs at the end before refs
// would name them. No network, no protocol, no lookups, no refs.
//
//	pullfloor SRC/cas/objects DEST
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: pullfloor SRC/cas/objects DEST")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "pullfloor:", err)
		os.Exit(1)
	}
}

func run(src, dest string) error {
	tmp, objects := filepath.Join(dest, "tmp"), filepath.Join(dest, "cas", "objects")
	for _, d := range []string{tmp, objects} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var buf []byte
	n, bytes := 0, 0
	err := filepath.WalkDir(src, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		data, err := readInto(&buf, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		hash := hex.EncodeToString(sum[:])
		if err := write(tmp, filepath.Join(objects, hash[:2], hash[2:]), data); err != nil {
			return err
		}
		n, bytes = n+1, bytes+len(data)
		return nil
	})
	if err != nil {
		return err
	}
	d, err := unix.Open(dest, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	if err := unix.Syncfs(d); err != nil {
		return err
	}
	fmt.Printf("%d objects, %d bytes\n", n, bytes)
	return nil
}

// readInto reads the file at p into *buf, grown as needed.
func readInto(buf *[]byte, p string) ([]byte, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if int(st.Size) > cap(*buf) {
		*buf = make([]byte, st.Size)
	}
	data := (*buf)[:st.Size]
	for k := 0; k < len(data); {
		m, err := unix.Read(fd, data[k:])
		if err != nil {
			return nil, err
		}
		if m == 0 {
			return nil, fmt.Errorf("%s: shorter than it was", p)
		}
		k += m
	}
	return data, nil
}

// write stores data at final as a pull does.
func write(tmp, final string, data []byte) error {
	fd, err := unix.Open(tmp, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for k := 0; k < len(data); {
		m, err := unix.Write(fd, data[k:])
		if err != nil {
			return err
		}
		k += m
	}
	err = unix.Linkat(fd, "", unix.AT_FDCWD, final, unix.AT_EMPTY_PATH)
	if err == unix.ENOENT {
		if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
			return err
		}
		err = unix.Linkat(fd, "", unix.AT_FDCWD, final, unix.AT_EMPTY_PATH)
	}
	return err
}
