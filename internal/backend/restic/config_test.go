package restic

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"onebackup/internal/backend"
	"onebackup/internal/one"
)

func datastore(t *testing.T, attrs map[string]string) *one.Datastore {
	t.Helper()
	var b strings.Builder
	b.WriteString("<DATASTORE><ID>300</ID><DS_MAD>restic</DS_MAD><BASE_PATH>/var/lib/one//datastores/300</BASE_PATH><TEMPLATE>")
	for k, v := range attrs {
		fmt.Fprintf(&b, "<%s><![CDATA[%s]]></%s>", k, v, k)
	}
	b.WriteString("</TEMPLATE></DATASTORE>")
	msg, err := one.ParseMessage([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := msg.Datastore()
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func s3Attrs(extra map[string]string) map[string]string {
	a := map[string]string{"RESTIC_BACKEND": "s3", "RESTIC_PASSWORD": "pw", "RESTIC_S3_ACCESS_KEY_ID": "AKIA1",
		"RESTIC_S3_SECRET_ACCESS_KEY": "s3cr3t/+key", "RESTIC_S3_BUCKET": "backups"}
	for k, v := range extra {
		a[k] = v
	}
	return a
}

func TestS3Defaults(t *testing.T) {
	c, err := ParseConfig(datastore(t, s3Attrs(nil)))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Repo(backend.Location{VMID: 42}); got != "s3:s3.amazonaws.com/backups/42" {
		t.Errorf("repo %q", got)
	}
	if got := c.Repo(backend.Location{VMID: 42, JobID: "7"}); got != "s3:s3.amazonaws.com/backups/job_7" {
		t.Errorf("job repo %q", got)
	}
	if got := c.Repo(backend.Location{VMID: -1}); got != "s3:s3.amazonaws.com/backups" {
		t.Errorf("datastore repo %q", got)
	}
	want := map[string]string{"RESTIC_PASSWORD": "pw", "AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s3cr3t/+key",
		"AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
	if env := c.Env(); !reflect.DeepEqual(env, want) {
		t.Errorf("env %v", env)
	}
	// RESTIC_CONNECTIONS is an SFTP option: S3 commands never carry it, nor any secret.
	args := c.Args(c.Repo(backend.Location{VMID: 42}), "snapshots")
	if !reflect.DeepEqual(args, []string{"--repo=s3:s3.amazonaws.com/backups/42", "snapshots"}) {
		t.Errorf("args %q", args)
	}
	if c.S3.TotalMB != 1048576 {
		t.Errorf("TOTAL_MB %d", c.S3.TotalMB)
	}
}

func TestS3Options(t *testing.T) {
	c, err := ParseConfig(datastore(t, s3Attrs(map[string]string{
		"RESTIC_S3_ENDPOINT": "https://minio.example:9000/", "RESTIC_S3_REGION": "eu-west-1", "RESTIC_S3_FORCE_PATH_STYLE": "YES",
		"RESTIC_S3_CACERT": "/etc/one/ca.pem", "RESTIC_S3_INSECURE_TLS": "yes", "RESTIC_CONNECTIONS": "9",
		"RESTIC_BWLIMIT": "100", "RESTIC_COMPRESSION": "max", "TOTAL_MB": "500",
	})))
	if err != nil {
		t.Fatal(err)
	}
	repo := c.Repo(backend.Location{VMID: 3})
	if repo != "s3:https://minio.example:9000/backups/3" {
		t.Errorf("repo %q", repo)
	}
	want := []string{"--repo=" + repo, "--limit-upload=100", "--limit-download=100", "--option=s3.bucket-lookup=path",
		"--cacert=/etc/one/ca.pem", "--insecure-tls", "--compression=max", "backup", "x"}
	if got := c.Args(repo, "backup", "x"); !reflect.DeepEqual(got, want) {
		t.Errorf("args\n got %q\nwant %q", got, want)
	}
	if env := c.Env(); env["AWS_REGION"] != "eu-west-1" || env["AWS_DEFAULT_REGION"] != "eu-west-1" {
		t.Errorf("env %v", env)
	}
	if c.S3.TotalMB != 500 || c.S3.server() != "minio.example:9000" {
		t.Errorf("%+v", c.S3)
	}
	// An endpoint already written as restic's prefix is kept as it is.
	c, err = ParseConfig(datastore(t, s3Attrs(map[string]string{"RESTIC_S3_ENDPOINT": "s3:http://127.0.0.1:7480"})))
	if err != nil || c.Repo(backend.Location{VMID: 1}) != "s3:http://127.0.0.1:7480/backups/1" {
		t.Errorf("s3: prefix: %v %v", c, err)
	}
}

func TestS3Refusals(t *testing.T) {
	for name, tc := range map[string]struct {
		attrs map[string]string
		want  string
	}{
		"no key id":     {map[string]string{"RESTIC_S3_ACCESS_KEY_ID": ""}, "RESTIC_S3_ACCESS_KEY_ID is not set"},
		"no secret":     {map[string]string{"RESTIC_S3_SECRET_ACCESS_KEY": ""}, "RESTIC_S3_SECRET_ACCESS_KEY is not set"},
		"no bucket":     {map[string]string{"RESTIC_S3_BUCKET": ""}, "RESTIC_S3_BUCKET is not set"},
		"bad bucket":    {map[string]string{"RESTIC_S3_BUCKET": "a b"}, "invalid RESTIC_S3_BUCKET"},
		"dotdot bucket": {map[string]string{"RESTIC_S3_BUCKET": "b/../c"}, "invalid RESTIC_S3_BUCKET"},
		"secret blank":  {map[string]string{"RESTIC_S3_SECRET_ACCESS_KEY": "two words"}, "invalid RESTIC_S3_SECRET_ACCESS_KEY"},
		"endpoint ftp":  {map[string]string{"RESTIC_S3_ENDPOINT": "ftp://x"}, "invalid RESTIC_S3_ENDPOINT"},
		"endpoint user": {map[string]string{"RESTIC_S3_ENDPOINT": "https://u:p@x"}, "invalid RESTIC_S3_ENDPOINT"},
		"endpoint opt":  {map[string]string{"RESTIC_S3_ENDPOINT": "-oProxyCommand=x"}, "invalid RESTIC_S3_ENDPOINT"},
		"endpoint port": {map[string]string{"RESTIC_S3_ENDPOINT": "host:99999"}, "invalid RESTIC_S3_ENDPOINT"},
		"path style":    {map[string]string{"RESTIC_S3_FORCE_PATH_STYLE": "maybe"}, "invalid RESTIC_S3_FORCE_PATH_STYLE"},
		"insecure":      {map[string]string{"RESTIC_S3_INSECURE_TLS": "1"}, "invalid RESTIC_S3_INSECURE_TLS"},
		"cacert":        {map[string]string{"RESTIC_S3_CACERT": "ca.pem"}, "RESTIC_S3_CACERT"},
		"region":        {map[string]string{"RESTIC_S3_REGION": "EU West"}, "invalid RESTIC_S3_REGION"},
		"total":         {map[string]string{"TOTAL_MB": "-3"}, "invalid TOTAL_MB"},
		"backend":       {map[string]string{"RESTIC_BACKEND": "gcs"}, `unknown RESTIC_BACKEND "gcs"`},
	} {
		_, err := ParseConfig(datastore(t, s3Attrs(tc.attrs)))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "wrong restic datastore configuration: ") {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%s: the secret key is in the message: %v", name, err)
		}
	}
}
