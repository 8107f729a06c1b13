package commands_test

import (
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// Push and copy read the target's index as pull and which do: Buildbarn's
// bb_remote_asset without an "error" fetcher (or with the http fetcher)
// refuses a fetch of a URI it does not hold with PERMISSION_DENIED or
// UNIMPLEMENTED, which is a miss, not a failure of the push. The asset
// index stands for bb_remote_asset (Fetch refused, Push works), the
// routing proxy for the Buildbarn frontend in front of it and serve's
// CAS.
func TestPushToRefusingAssetIndex(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	refs := testenv.Genrefs(t, src, "-n", "2")
	good := testenv.StartServe(t, testenv.ServeOptions{Dir: src})
	for _, code := range []codes.Code{codes.PermissionDenied, codes.Unimplemented} {
		t.Run(code.String(), func(t *testing.T) {
			bb := func() (string, *testenv.AssetIndex) {
				index := testenv.StartAssetIndex(t, code)
				cas := testenv.StartServe(t, testenv.ServeOptions{Push: true})
				return "http://" + testenv.StartProxy(t, cas.Addr, testenv.ProxyFaults{Route: map[string]string{"/build.bazel.remote.asset.v1.": index.Addr}}), index
			}
			pushTo, pushIndex := bb()
			copyTo, copyIndex := bb()
			cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("good", good.URL(), false)+cacheTOML("bb", pushTo, true)+cacheTOML("bb2", copyTo, true))

			rep, stderr, exit := runJSON(t, "--config", cfg, "--local", src, "push", "--cache", "bb", refs[0])
			if exit != 0 || statuses(rep) != "done@bb" || pushIndex.Len() != 2 {
				t.Errorf("push to a refusing index: exit %d, %+v, %d index entries; want done, the strong and weak refs\n%s", exit, rep.Refs, pushIndex.Len(), stderr)
			}
			rep, stderr, exit = runJSON(t, "--config", cfg, "--local", t.TempDir(), "copy", "--from", "good", "--to", "bb2", refs[1])
			if exit != 0 || statuses(rep) != "done@bb2" || copyIndex.Len() != 2 {
				t.Errorf("copy to a refusing index: exit %d, %+v, %d index entries; want done\n%s", exit, rep.Refs, copyIndex.Len(), stderr)
			}
			// Now the index names it: skipped, with the blobs all there.
			if rep, stderr, exit := runJSON(t, "--config", cfg, "--local", src, "push", "--cache", "bb", refs[0]); exit != 0 || statuses(rep) != "skipped@bb" {
				t.Errorf("push again: exit %d, %+v\n%s", exit, rep.Refs, stderr)
			}
		})
	}
}
