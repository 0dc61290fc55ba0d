package restic

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// s3CheckTimeout bounds the check of the endpoint: restic itself retries a failing S3 request
// with back-off for up to 15 minutes, which would hold a backup that can never work.
const s3CheckTimeout = 20 * time.Second

// check asks the endpoint once, before restic runs, to list the datastore's prefix of the bucket
// (restic lists it too, so it needs the permission anyway) and turns each way that fails into
// one sentence: endpoint unreachable, certificate not trusted, keys refused, bucket missing.
func (s *S3Config) check(ctx context.Context) error {
	u, err := url.Parse(strings.TrimPrefix(s.Prefix, "s3:"))
	if err != nil || u.Host == "" {
		// host[:port] without a scheme: restic uses HTTPS.
		u = &url.URL{Scheme: "https", Host: strings.TrimPrefix(s.Prefix, "s3:")}
	}
	tlsConf := &tls.Config{InsecureSkipVerify: s.InsecureTLS}
	if s.CACert != "" {
		pem, err := os.ReadFile(s.CACert)
		if err != nil {
			return fmt.Errorf("cannot read RESTIC_S3_CACERT: %w", err)
		}
		tlsConf.RootCAs = x509.NewCertPool()
		if !tlsConf.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("RESTIC_S3_CACERT %s holds no PEM certificate", s.CACert)
		}
	}
	lookup := minio.BucketLookupAuto
	if s.PathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(u.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKeyID, s.SecretAccessKey, ""),
		Secure:       u.Scheme == "https",
		Region:       s.Region,
		BucketLookup: lookup,
		MaxRetries:   1,
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			TLSClientConfig:     tlsConf,
			TLSHandshakeTimeout: 10 * time.Second,
		},
	})
	if err != nil {
		return fmt.Errorf("invalid S3 endpoint %s: %w", u.Host, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s3CheckTimeout)
	defer cancel()
	bucket, prefix, _ := strings.Cut(s.Bucket, "/")
	// One page of at most one key is enough: the answer (or the error) is what matters.
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	for obj := range client.ListObjects(lctx, bucket, minio.ListObjectsOptions{Prefix: prefix, MaxKeys: 1}) {
		err = obj.Err
		break
	}
	if err == nil {
		return nil
	}
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var tlsRecord tls.RecordHeaderError
	resp := minio.ToErrorResponse(err)
	answer := resp.Code
	if resp.Message != "" {
		answer += ": " + resp.Message
	}
	switch code := resp.Code; {
	case code == "NoSuchBucket":
		return fmt.Errorf("bucket %s does not exist on S3 endpoint %s (create it, or correct RESTIC_S3_BUCKET)", bucket, u.Host)
	case resp.StatusCode == http.StatusForbidden || keyCodes[code]:
		// Servers name an unknown key, a wrong secret and a missing permission differently,
		// mostly with 403.
		return fmt.Errorf("S3 endpoint %s refused the datastore's S3 keys for bucket %s (check RESTIC_S3_ACCESS_KEY_ID, RESTIC_S3_SECRET_ACCESS_KEY and the keys' permission to list, read and write the bucket): %s", u.Host, bucket, answer)
	case errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, new(*tls.CertificateVerificationError)):
		return fmt.Errorf("the certificate of S3 endpoint %s is not trusted (set RESTIC_S3_CACERT to the CA that signed it, or RESTIC_S3_INSECURE_TLS=YES): %v", u.Host, innermost(err))
	case errors.As(err, &tlsRecord):
		return fmt.Errorf("S3 endpoint %s does not speak TLS (use an http:// RESTIC_S3_ENDPOINT): %v", u.Host, innermost(err))
	case code == "":
		return fmt.Errorf("cannot reach S3 endpoint %s: %v", u.Host, innermost(err))
	}
	return fmt.Errorf("S3 endpoint %s answered %s", u.Host, answer)
}

// keyCodes are the S3 error codes of refused credentials (AWS's, and versitygw's for an unknown
// key, which it answers with another status than 403).
var keyCodes = map[string]bool{"InvalidAccessKeyId": true, "SignatureDoesNotMatch": true, "AccessDenied": true,
	"XAdminUserNotFound": true, "InvalidToken": true, "ExpiredToken": true}

// innermost is the deepest wrapped error of a network failure (the URL and method of the
// request are noise in a one-line message).
func innermost(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
