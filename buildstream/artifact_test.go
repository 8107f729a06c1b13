package buildstream

import (
	"errors"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// What a stored ref of every kind names: the digest its index entry
// names, the roots that must be present and the optional ones, for the
// content BuildStream itself writes; content that is not of its kind is
// an error.
func TestReadRef(t *testing.T) {
	d := func(s string) digest.Digest { return digest.NewFromBlob([]byte(s)) }
	marshal := func(m proto.Message) []byte {
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	root, files, public, low, high, log1, log2 := d("root"), d("files"), d("public"), d("low"), d("high"), d("log1"), d("log2")
	buildtree, sources, buildroot, sub := d("buildtree"), d("sources"), d("buildroot"), d("sub")
	full := marshal(&bspb.Artifact{
		BuildSuccess: true,
		Files:        files.ToProto(), PublicData: public.ToProto(),
		LowDiversityMeta: low.ToProto(), HighDiversityMeta: high.ToProto(),
		Logs:      []*bspb.Artifact_LogFile{{Name: "a", Digest: log1.ToProto()}, {Name: "b", Digest: log2.ToProto()}},
		Buildtree: buildtree.ToProto(), Sources: sources.ToProto(), Buildroot: buildroot.ToProto(),
		Buildsandbox: &bspb.Artifact_SandboxState{SubsandboxDigests: []*repb.Digest{sub.ToProto()}},
	})
	failed := marshal(&bspb.Artifact{Files: files.ToProto(), LowDiversityMeta: low.ToProto()})
	badDigest := marshal(&bspb.Artifact{BuildSuccess: true, Files: &repb.Digest{Hash: "not hex", SizeBytes: 1}})
	source := marshal(&bspb.Source{Version: 1, Files: files.ToProto()})
	for _, tc := range []struct {
		name    string
		kind    cache.Kind
		data    []byte
		want    Named
		wantErr error // nil: any error when want is zero
	}{
		{
			name: "bst1 ref: its root Directory", kind: cache.KindBst1Artifact, data: V1RefContent(root),
			want: Named{Digest: root, Required: cache.Roots{Dirs: []digest.Digest{root}}},
		},
		{name: "bst1 ref that is not a Digest", kind: cache.KindBst1Artifact, data: []byte("\xff\xff")},
		{
			name: "bst2 artifact: files, metadata, public data, logs and the proto; optional trees apart",
			kind: cache.KindBst2Artifact, data: full,
			want: Named{
				Digest:   digest.NewFromBlob(full),
				Required: cache.Roots{Dirs: []digest.Digest{files}, Blobs: []digest.Digest{public, low, high, log1, log2, digest.NewFromBlob(full)}},
				Optional: cache.Roots{Dirs: []digest.Digest{buildtree, sources, buildroot, sub}},
			},
		},
		{
			name: "bst2 artifact of a failed build", kind: cache.KindBst2Artifact, data: failed,
			want: Named{
				Digest:   digest.NewFromBlob(failed),
				Required: cache.Roots{Dirs: []digest.Digest{files}, Blobs: []digest.Digest{low, digest.NewFromBlob(failed)}},
				Failed:   true,
			},
		},
		{name: "bst2 artifact naming a bad digest", kind: cache.KindBst2Artifact, data: badDigest, wantErr: cache.ErrBadDirectory},
		{name: "bst2 artifact that is not an Artifact", kind: cache.KindBst2Artifact, data: []byte("\xff\xff")},
		{
			name: "source: its files and the proto", kind: cache.KindSource, data: source,
			want: Named{Digest: digest.NewFromBlob(source), Required: cache.Roots{Dirs: []digest.Digest{files}, Blobs: []digest.Digest{digest.NewFromBlob(source)}}},
		},
		{name: "source that is not a Source", kind: cache.KindSource, data: []byte("\xff\xff")},
		{name: "a server's asset record is not BuildStream's", kind: cache.KindAsset, data: []byte(`{"type":"blob"}`)},
		{name: "either artifact format is no kind of content", kind: cache.KindArtifact, data: V1RefContent(root)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadRef(tc.kind, tc.data)
			if tc.want.Digest == (digest.Digest{}) {
				if err == nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Fatalf("ReadRef = %+v, %v; want an error (%v)", got, err, tc.wantErr)
				}
				if !cmp.Equal(got, Named{}) {
					t.Errorf("ReadRef failed but named %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ReadRef (-want +got):\n%s", diff)
			}
		})
	}
}
