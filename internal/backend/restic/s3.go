package restic

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"onebackup/internal/one"
	"onebackup/internal/validate"
)

// S3Config is the S3 backend of a restic datastore (RESTIC_BACKEND=S3): repositories live in a
// bucket, restic reaches them with the datastore's keys, from the frontend for maintenance and
// straight from the VM host for uploads.
type S3Config struct {
	AccessKeyID, SecretAccessKey string
	Bucket                       string
	Region                       string
	// Prefix is the endpoint as restic's repository prefix: "s3:" followed by a host[:port] or
	// a URL (http:// for servers without TLS).
	Prefix      string
	PathStyle   bool   // RESTIC_S3_FORCE_PATH_STYLE: bucket in the path, not the host name
	CACert      string // RESTIC_S3_CACERT: CA of the endpoint's certificate, on every host
	InsecureTLS bool
	TotalMB     int64 // capacity reported by monitor (S3 has no size to ask)
}

const (
	defaultS3Endpoint = "s3.amazonaws.com"
	defaultS3Region   = "us-east-1"
	defaultS3TotalMB  = 1048576
)

var (
	// Keys are printable ASCII without blanks or quotes: they travel in the environment only,
	// but a stray newline from a template would break any tool reading them.
	s3KeyRe = regexp.MustCompile(`^[!#-&(-~]+$`)
	// A bucket (optionally with a key prefix inside it): names as S3 servers accept them,
	// including the legacy upper-case and underscore names of us-east-1.
	s3BucketRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$`)
	s3RegionRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
)

func parseS3(ds *one.Datastore) (*S3Config, error) {
	s := &S3Config{Region: defaultS3Region, TotalMB: defaultS3TotalMB}
	required := func(name string, re *regexp.Regexp, what string) (string, error) {
		v := ds.Attr(name)
		if v == "" {
			return "", fmt.Errorf("%s is not set (RESTIC_BACKEND=S3 needs it)", name)
		}
		if !re.MatchString(v) {
			return "", fmt.Errorf("invalid %s: %s", name, what)
		}
		return v, nil
	}
	var err error
	if s.AccessKeyID, err = required("RESTIC_S3_ACCESS_KEY_ID", s3KeyRe, "expected printable characters without blanks or quotes"); err != nil {
		return nil, err
	}
	// The secret is registered before it is checked, so that no message can show it.
	one.RegisterSecret(ds.Attr("RESTIC_S3_SECRET_ACCESS_KEY"))
	if s.SecretAccessKey, err = required("RESTIC_S3_SECRET_ACCESS_KEY", s3KeyRe, "expected printable characters without blanks or quotes"); err != nil {
		return nil, err
	}
	if s.Bucket, err = required("RESTIC_S3_BUCKET", s3BucketRe, "expected a bucket name (letters, digits, '.', '-', '_'), optionally followed by /<prefix>"); err != nil {
		return nil, err
	}
	if strings.Contains("/"+s.Bucket+"/", "/../") || strings.Contains("/"+s.Bucket+"/", "/./") {
		return nil, fmt.Errorf("invalid RESTIC_S3_BUCKET %q: '.' and '..' are not prefixes", s.Bucket)
	}
	if v := ds.Attr("RESTIC_S3_REGION"); v != "" {
		if !s3RegionRe.MatchString(v) {
			return nil, fmt.Errorf("invalid RESTIC_S3_REGION %q: expected a region name such as eu-west-1", v)
		}
		s.Region = v
	}
	if s.Prefix, err = s3Prefix(ds.Attr("RESTIC_S3_ENDPOINT")); err != nil {
		return nil, err
	}
	if s.PathStyle, err = yesNo(ds, "RESTIC_S3_FORCE_PATH_STYLE"); err != nil {
		return nil, err
	}
	if s.InsecureTLS, err = yesNo(ds, "RESTIC_S3_INSECURE_TLS"); err != nil {
		return nil, err
	}
	if v := ds.Attr("RESTIC_S3_CACERT"); v != "" {
		if s.CACert, err = validate.AbsPath("RESTIC_S3_CACERT", v); err != nil {
			return nil, err
		}
	}
	if v := ds.Attr("TOTAL_MB"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("invalid TOTAL_MB %q: expected a positive number of MiB", v)
		}
		s.TotalMB = n
	}
	return s, nil
}

// s3Prefix renders RESTIC_S3_ENDPOINT as OpenNebula does (a trailing '/' dropped, "s3:" added
// unless present) after checking that it is a host[:port] or an http(s) URL without anything a
// command line or a repository path could misread.
func s3Prefix(v string) (string, error) {
	if v == "" {
		v = defaultS3Endpoint
	}
	v = strings.TrimRight(v, "/")
	rest := strings.TrimPrefix(v, "s3:")
	bad := fmt.Errorf("invalid RESTIC_S3_ENDPOINT %q: expected a host[:port] or an http(s):// URL", v)
	if rest == "" || strings.ContainsAny(rest, " \t\r\n'\"\\?#@") {
		return "", bad
	}
	hostport := rest
	if strings.Contains(rest, "://") {
		u, err := url.Parse(rest)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return "", bad
		}
		hostport = u.Host
	} else if strings.Contains(rest, "/") {
		return "", bad
	}
	host := hostport
	if h, port, err := net.SplitHostPort(hostport); err == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", bad
		}
		host = h
	}
	if validate.Host("RESTIC_S3_ENDPOINT", host) != nil {
		return "", bad
	}
	return "s3:" + rest, nil
}

func yesNo(ds *one.Datastore, name string) (bool, error) {
	switch v := strings.ToLower(ds.Attr(name)); v {
	case "", "no":
		return false, nil
	case "yes":
		return true, nil
	default:
		return false, fmt.Errorf("invalid %s %q: expected YES or NO", name, ds.Attr(name))
	}
}

// repo is <prefix>/<bucket>/<repo id>, or <prefix>/<bucket> for the datastore as a whole.
func (s *S3Config) repo(id string) string {
	r := s.Prefix + "/" + s.Bucket
	if id != "" {
		r += "/" + id
	}
	return r
}

// env adds the S3 credentials and region, which restic reads from the environment only.
func (s *S3Config) env(env map[string]string) {
	env["AWS_ACCESS_KEY_ID"] = s.AccessKeyID
	env["AWS_SECRET_ACCESS_KEY"] = s.SecretAccessKey
	env["AWS_DEFAULT_REGION"] = s.Region
	env["AWS_REGION"] = s.Region
}

// flags are the backend options on every restic command.
func (s *S3Config) flags() []string {
	var out []string
	if s.PathStyle {
		out = append(out, "--option=s3.bucket-lookup=path")
	}
	if s.CACert != "" {
		out = append(out, "--cacert="+s.CACert)
	}
	if s.InsecureTLS {
		out = append(out, "--insecure-tls")
	}
	return out
}

// server is the endpoint's host[:port], for messages.
func (s *S3Config) server() string {
	rest := strings.TrimPrefix(s.Prefix, "s3:")
	if u, err := url.Parse(rest); err == nil && u.Host != "" {
		return u.Host
	}
	return rest
}
