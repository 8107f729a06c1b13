package cache

import (
	"fmt"
	"os"
	"testing"
)

// Objects written unnamed (O_TMPFILE) get their names by their descriptor
// (linkat's AT_EMPTY_PATH) where the kernel allows it, else through
// /proc/self/fd; either way, whichever was found first, into fan-out
// directories that do not exist yet, and over a damaged object, each
// object ends up whole under its name.
func TestLinkByDescriptorOrProc(t *testing.T) {
	was := flink.Load()
	t.Cleanup(func() { flink.Store(was) })
	for _, state := range []int32{0, 1, -1} {
		t.Run(fmt.Sprint(state), func(t *testing.T) {
			flink.Store(state)
			s := openTemp(t, KindBst2Artifact)
			for i := range 20 {
				data := []byte(fmt.Sprintf("blob %d", i))
				if _, err := s.Add(data); err != nil {
					t.Fatal(err)
				}
			}
			data := []byte("damaged")
			d, err := s.Add(data)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(s.ObjectPath(d), 3); err != nil {
				t.Fatal(err)
			}
			if err := s.PutVerified(d, data); err != nil {
				t.Fatal(err)
			}
			if got, err := s.ReadBlob(d); err != nil || string(got) != "damaged" {
				t.Errorf("the damaged object: %q, %v", got, err)
			}
			if state == 0 && flink.Load() == 0 {
				t.Errorf("linking did not find out whether AT_EMPTY_PATH works")
			}
			if left := tmpEntries(t, s); len(left) > 0 {
				t.Errorf("temporary files left: %v", left)
			}
		})
	}
}
