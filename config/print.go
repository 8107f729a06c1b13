package config

import (
	"fmt"
	"io"
	"strings"
)

// Redacted stands in for a secret in anything printed.
const Redacted = "***"

// View is the printable form of a Config: what `bst-cache config --json`
// prints. Secrets are redacted.
type View struct {
	Files      []string    `json:"files"`
	Format     string      `json:"format"`
	FormatFrom string      `json:"format_from"`
	Local      string      `json:"local"`
	LocalFrom  string      `json:"local_from"`
	Jobs       int         `json:"jobs"`
	Caches     []CacheView `json:"caches"`
}

// CacheView is the printable form of a Cache.
type CacheView struct {
	Name           string   `json:"name"`
	URL            string   `json:"url"`
	InstanceName   string   `json:"instance_name"`
	Type           Type     `json:"type"`
	Push           bool     `json:"push"`
	MaxConcurrency int      `json:"max_concurrency"`
	Bandwidth      int64    `json:"bandwidth,omitempty"`
	Compression    string   `json:"compression"`
	Origin         string   `json:"origin"`
	Auth           AuthView `json:"auth"`
	ConnectTimeout string   `json:"connect_timeout"`
	RequestTimeout string   `json:"request_timeout"`
	RetryLimit     int      `json:"retry_limit"`
	RetryDelay     string   `json:"retry_delay"`
	StallTimeout   string   `json:"stall_timeout"`
}

// AuthView shows credential file paths, and the token only as Redacted.
type AuthView struct {
	ServerCert      string `json:"server_cert,omitempty"`
	ClientCert      string `json:"client_cert,omitempty"`
	ClientKey       string `json:"client_key,omitempty"`
	AccessToken     string `json:"access_token,omitempty"`
	AccessTokenFile string `json:"access_token_file,omitempty"`
	// CredentialHelper is the helper's path: configured, never run to
	// print.
	CredentialHelper string `json:"credential_helper,omitempty"`
}

// View returns the printable form.
func (c *Config) View() View {
	v := View{Files: c.Files, Format: c.Format.Format(), FormatFrom: c.FormatFrom, Local: c.Local, LocalFrom: c.LocalFrom, Jobs: c.Jobs, Caches: []CacheView{}}
	if v.Files == nil {
		v.Files = []string{}
	}
	for _, cc := range c.Caches {
		cv := CacheView{
			Name: cc.Name, URL: cc.URL, InstanceName: cc.InstanceName, Type: cc.Type,
			Push: cc.Push, MaxConcurrency: cc.MaxConcurrency, Bandwidth: cc.Bandwidth, Origin: cc.Origin.String(),
			Compression: string(cc.Compression),
			Auth: AuthView{
				ServerCert: cc.Auth.ServerCert, ClientCert: cc.Auth.ClientCert,
				ClientKey: cc.Auth.ClientKey, AccessTokenFile: cc.Auth.AccessTokenFile,
				CredentialHelper: cc.Auth.CredentialHelper,
			},
			ConnectTimeout: cc.Connection.ConnectTimeout.String(),
			RequestTimeout: cc.Connection.RequestTimeout.String(),
			RetryLimit:     cc.Connection.RetryLimit,
			RetryDelay:     cc.Connection.RetryDelay.String(),
			StallTimeout:   cc.Connection.StallTimeout.String(),
		}
		if cc.Auth.AccessTokenFile != "" {
			cv.Auth.AccessToken = Redacted
		}
		v.Caches = append(v.Caches, cv)
	}
	return v
}

// WriteTOML prints the resolved configuration as TOML in the shape of a
// config file (the token redacted, paths made absolute),
// with where each cache came from as a comment.
func (c *Config) WriteTOML(w io.Writer) error {
	v := c.View()
	var b strings.Builder
	if len(v.Files) == 0 {
		b.WriteString("# no configuration file: defaults only\n")
	} else {
		fmt.Fprintf(&b, "# read: %s\n", strings.Join(v.Files, ", "))
	}
	if v.Format == "" {
		b.WriteString("# format: not set: each ref is looked up as bst1 and bst2 at once\n")
	} else {
		fmt.Fprintf(&b, "format = %s  # from %s\n", quote(v.Format), v.FormatFrom)
	}
	fmt.Fprintf(&b, "local = %s  # from %s\njobs = %d\n", quote(v.Local), v.LocalFrom, v.Jobs)
	for _, cv := range v.Caches {
		fmt.Fprintf(&b, "\n# from %s\n[[cache]]\n", cv.Origin)
		fmt.Fprintf(&b, "name = %s\nurl = %s\ninstance-name = %s\ntype = %s\npush = %t\nmax-concurrency = %d\n",
			quote(cv.Name), quote(cv.URL), quote(cv.InstanceName), quote(string(cv.Type)), cv.Push, cv.MaxConcurrency)
		fmt.Fprintf(&b, "compression = %s\n", quote(cv.Compression))
		if cv.Bandwidth > 0 {
			fmt.Fprintf(&b, "bandwidth = \"%dB/s\"\n", cv.Bandwidth)
		}
		a := cv.Auth
		if a != (AuthView{}) {
			b.WriteString("[cache.auth]\n")
			for _, kv := range [][2]string{{"server-cert", a.ServerCert}, {"client-cert", a.ClientCert}, {"client-key", a.ClientKey}} {
				if kv[1] != "" {
					fmt.Fprintf(&b, "%s = %s\n", kv[0], quote(kv[1]))
				}
			}
			if a.AccessTokenFile != "" {
				fmt.Fprintf(&b, "access-token = %s  # token read from %s\n", quote(a.AccessToken), a.AccessTokenFile)
			}
			if a.CredentialHelper != "" {
				fmt.Fprintf(&b, "credential-helper = %s  # run as \"PATH get\" when a call needs headers\n", quote(a.CredentialHelper))
			}
		}
		fmt.Fprintf(&b, "[cache.connection]\nconnect-timeout = %s\nrequest-timeout = %s\nretry-limit = %d\nretry-delay = %s\nstall-timeout = %s\n",
			quote(cv.ConnectTimeout), quote(cv.RequestTimeout), cv.RetryLimit, quote(cv.RetryDelay), quote(cv.StallTimeout))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// quote makes a TOML basic string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			b.WriteString(`\u` + fmt.Sprintf("%04X", r))
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
