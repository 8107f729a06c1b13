package config

import (
	"errors"
	"fmt"
	"time"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
)

// ErrInvalid is wrapped by every configuration error, so the command line can
// map it to the usage/configuration exit code.
var ErrInvalid = errors.New("invalid configuration")

// Type says which services a cache offers: an index of refs, CAS storage, or both.
type Type string

// The cache types.
const (
	TypeIndex   Type = "index"
	TypeStorage Type = "storage"
	TypeAll     Type = "all"
)

// HasIndex reports whether refs are looked up on a cache of this type.
func (t Type) HasIndex() bool { return t == TypeIndex || t == TypeAll }

// HasStorage reports whether blobs are read from a cache of this type.
func (t Type) HasStorage() bool { return t == TypeStorage || t == TypeAll }

// Defaults for settings a file leaves out.
const (
	DefaultJobs           = 8
	DefaultMaxConcurrency = 64
	DefaultConnectTimeout = 10 * time.Second
	DefaultRequestTimeout = 5 * time.Minute
	DefaultRetryLimit     = 4
	DefaultRetryDelay     = time.Second
	DefaultStallTimeout   = 60 * time.Second
)

// Origin is where a setting was read: a file and a 1-based line.
type Origin struct {
	File string `json:"file"`
	Line int    `json:"line"`
}

func (o Origin) String() string {
	if o.File == "" {
		return "(default)"
	}
	if o.Line == 0 {
		return o.File
	}
	return fmt.Sprintf("%s:%d", o.File, o.Line)
}

// Config is the resolved configuration.
type Config struct {
	// Format is the kind of artifact refs are read as:
	// cache.KindBst1Artifact or cache.KindBst2Artifact when a file, flag
	// or project set a format, else cache.KindArtifact (either: refs are
	// looked up in both).
	Format cache.Kind
	// FormatFrom and LocalFrom say where the format and the local store
	// came from ("(default)" when nothing set them).
	FormatFrom, LocalFrom string
	// Local is the local store directory, absolute, with ~ expanded;
	// LocalSet is true when a bst-cache file set it.
	Local    string
	LocalSet bool
	Jobs     int
	// Bwlimit, when positive, caps the bytes per second of a run over
	// all caches together (--bwlimit).
	Bwlimit int64
	// LocalMaxSize, when positive, makes pull and copy run a gc of the
	// local store down to it when they finish.
	LocalMaxSize int64
	// Caches in priority order: the first is asked first. BuildStream's
	// artifact caches come first, as BuildStream orders them.
	Caches []Cache
	// SourceCaches are the caches for BuildStream 2 sources: BuildStream's
	// source-caches, then the bst-cache files' caches.
	SourceCaches []Cache
	// Project is the BuildStream project of the working directory, if any.
	Project *buildstream.Project
	// NonStrict is set when BuildStream's user configuration builds the
	// project in non-strict mode (projects.NAME.strict: false).
	NonStrict bool
	// Files lists the files that were read, in the order they were read.
	Files []string
}

// Cache is one remote cache.
type Cache struct {
	Name string
	// URL as written; Endpoint is what it resolves to.
	URL            string
	Endpoint       Endpoint
	InstanceName   string
	Type           Type
	Push           bool
	MaxConcurrency int
	// Bandwidth caps the bytes per second to and from this cache (0: no
	// cap).
	Bandwidth int64
	// Compression is whether blobs may cross the wire zstd-compressed
	// when the cache advertises it.
	Compression Compression
	Auth        Auth
	Connection  Connection
	// Origin is the [[cache]] header that declared it.
	Origin Origin
}

// Compression says whether a cache's blobs travel compressed.
type Compression string

// The compression settings. Auto uses zstd where the cache advertises it
// (REAPI supported_compressors); off never compresses.
const (
	CompressionAuto Compression = "auto"
	CompressionOff  Compression = "off"
)

// Auth holds credentials as absolute file paths. The files are checked to
// exist at load time and read only when a connection is made.
type Auth struct {
	ServerCert      string
	ClientCert      string
	ClientKey       string
	AccessTokenFile string
	// CredentialHelper is a program run as "PATH get" for the headers
	// every call carries (Bazel's credential helper protocol).
	CredentialHelper string
}

// Connection holds timeouts and retry policy.
type Connection struct {
	ConnectTimeout time.Duration
	// RequestTimeout bounds each unary call; ByteStream reads and writes
	// are bounded by StallTimeout and their size instead.
	RequestTimeout time.Duration
	// StallTimeout fails a stream that moves no bytes for this long.
	StallTimeout time.Duration
	RetryLimit   int
	RetryDelay   time.Duration
}

// Endpoint is a parsed cache URL.
type Endpoint struct {
	// Target is the gRPC dial target: host:port, or unix:PATH.
	Target string
	// TLS is true for https:// and grpcs://.
	TLS bool
	// ServerName is the host name checked against the server's certificate.
	ServerName string
}

// Cache returns the cache with the given name.
func (c *Config) Cache(name string) (*Cache, bool) {
	for i := range c.Caches {
		if c.Caches[i].Name == name {
			return &c.Caches[i], true
		}
	}
	return nil, false
}

// DefaultPush returns the first cache with push = true.
func (c *Config) DefaultPush() (*Cache, bool) {
	for i := range c.Caches {
		if c.Caches[i].Push {
			return &c.Caches[i], true
		}
	}
	return nil, false
}
