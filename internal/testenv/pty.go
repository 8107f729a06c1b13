package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Terminal is a pseudo-terminal a command runs on, as on a user's screen:
// its stdout and stderr are the terminal, of the width given.
type Terminal struct {
	master *os.File
	mu     sync.Mutex
	out    bytes.Buffer
	done   chan struct{}
}

// RunOnTerminal starts cmd with stdout and stderr on a new pseudo-terminal
// of cols columns and collects what it draws. Wait for it with
// Terminal.Wait.
func RunOnTerminal(t testing.TB, cmd *exec.Cmd, cols int) *Terminal {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening a pseudo-terminal: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlocking the pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("naming the pseudo-terminal: %v", err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening the pseudo-terminal's other end: %v", err)
	}
	if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: uint16(cols)}); err != nil {
		t.Fatalf("sizing the pseudo-terminal: %v", err)
	}
	cmd.Stdout, cmd.Stderr = slave, slave
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	term := &Terminal{master: master, done: make(chan struct{})}
	go func() {
		defer close(term.done)
		buf := make([]byte, 32<<10)
		for {
			n, err := master.Read(buf)
			term.mu.Lock()
			term.out.Write(buf[:n])
			term.mu.Unlock()
			if err != nil { // EIO once the command and its children exit
				return
			}
		}
	}()
	t.Cleanup(func() { master.Close() })
	return term
}

// Wait waits (at most timeout) for cmd to exit and its output to drain,
// and returns everything it drew.
func (term *Terminal) Wait(t testing.TB, cmd *exec.Cmd, timeout time.Duration) (string, error) {
	t.Helper()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var err error
	select {
	case err = <-exited:
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-exited
		return term.String(), fmt.Errorf("still running after %s", timeout)
	}
	select {
	case <-term.done:
	case <-time.After(5 * time.Second):
	}
	return term.String(), err
}

// String is what was drawn so far.
func (term *Terminal) String() string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return term.out.String()
}
