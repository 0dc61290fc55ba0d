package rsync

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"onebackup/internal/one"
)

func datastore(t *testing.T, base string, attrs map[string]string) *one.Datastore {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "<DATASTORE><ID>200</ID><DS_MAD>rsync</DS_MAD><BASE_PATH><![CDATA[%s]]></BASE_PATH><TEMPLATE>", base)
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

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig(datastore(t, "/var/lib/one//datastores/200", map[string]string{"RSYNC_HOST": "bk1"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.BasePath != "/var/lib/one/datastores/200" || c.Host != "bk1" || c.User != "oneadmin" ||
		!reflect.DeepEqual(c.Args, []string{"-aS"}) || c.TmpDir != "/var/tmp" || c.Sparsify || c.Confine.String() != "none" {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestParseConfigValues(t *testing.T) {
	c, err := ParseConfig(datastore(t, "/var/lib/one/datastores/200", map[string]string{
		"RSYNC_HOST": "backup.example.com", "RSYNC_USER": "backup", "RSYNC_ARGS": "-aS --bwlimit=1000 --info=stats2",
		"RSYNC_TMP_DIR": "/srv//tmp", "RSYNC_SPARSIFY": "YES", "RSYNC_NICE": "10", "RSYNC_IONICE": "3",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.User != "backup" || c.TmpDir != "/srv/tmp" || !c.Sparsify || c.Confine.Nice != 10 || c.Confine.IONice != 3 ||
		!reflect.DeepEqual(c.Args, []string{"-aS", "--bwlimit=1000", "--info=stats2"}) {
		t.Fatalf("values: %+v", c)
	}
}

func TestParseConfigErrors(t *testing.T) {
	good := "/var/lib/one/datastores/200"
	for _, tc := range []struct {
		base  string
		attrs map[string]string
		want  string
	}{
		{good, map[string]string{}, "RSYNC_HOST is not set"},
		{good, map[string]string{"RSYNC_HOST": "bk1;id"}, "invalid RSYNC_HOST"},
		{good, map[string]string{"RSYNC_HOST": "-oProxyCommand=x"}, "invalid RSYNC_HOST"},
		{good, map[string]string{"RSYNC_HOST": "bk1", "RSYNC_USER": "root x"}, "invalid RSYNC_USER"},
		{good, map[string]string{"RSYNC_HOST": "bk1", "RSYNC_USER": "-lroot"}, "invalid RSYNC_USER"},
		{good, map[string]string{"RSYNC_HOST": "bk1", "RSYNC_TMP_DIR": "tmp"}, "invalid RSYNC_TMP_DIR"},
		{good, map[string]string{"RSYNC_HOST": "bk1", "RSYNC_TMP_DIR": "/var/../etc"}, "invalid RSYNC_TMP_DIR"},
		{good, map[string]string{"RSYNC_HOST": "bk1", "RSYNC_SPARSIFY": "maybe"}, "invalid RSYNC_SPARSIFY"},
		{good, map[string]string{"RSYNC_HOST": "bk1", "RSYNC_NICE": "x"}, "invalid RSYNC_NICE"},
		{good, map[string]string{"RSYNC_HOST": "bk1", "RSYNC_MAX_WIOPS": "0"}, "invalid RSYNC_MAX_WIOPS"},
		{good, map[string]string{"RSYNC_HOST": "bk1", "RSYNC_ARGS": "-e ssh"}, "option -e"},
		{"/var/lib/one/data stores/200", map[string]string{"RSYNC_HOST": "bk1"}, "BASE_PATH"},
		{"/var/lib/one/$(id)/200", map[string]string{"RSYNC_HOST": "bk1"}, "BASE_PATH"},
		{"/var/lib/one/*/200", map[string]string{"RSYNC_HOST": "bk1"}, "BASE_PATH"},
		{"/", map[string]string{"RSYNC_HOST": "bk1"}, "BASE_PATH"},
		{"relative/200", map[string]string{"RSYNC_HOST": "bk1"}, "BASE_PATH"},
	} {
		_, err := ParseConfig(datastore(t, tc.base, tc.attrs))
		if err == nil {
			t.Errorf("%s %v: accepted", tc.base, tc.attrs)
			continue
		}
		if !strings.HasPrefix(err.Error(), "wrong rsync datastore configuration: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %v: error %q, want it to say %q", tc.base, tc.attrs, err, tc.want)
		}
	}
}

func TestParseArgsAccepted(t *testing.T) {
	for in, want := range map[string][]string{
		"-aS":                                  {"-aS"},
		"  -a   -S  ":                          {"-a", "-S"},
		"-aS --bwlimit=256":                    {"-aS", "--bwlimit=256"},
		"-aS --bwlimit 256":                    {"-aS", "--bwlimit", "256"},
		"-avzS --compress-level=3 -B 131072":   {"-avzS", "--compress-level=3", "-B", "131072"},
		"-aSB131072":                           {"-aSB131072"},
		"-a --no-whole-file --no-D --inplace":  {"-a", "--no-whole-file", "--no-D", "--inplace"},
		"-a --no-sparse --no-v":                {"-a", "--no-sparse", "--no-v"},
		`-a '--out-format=%n %l' --stats`:      {"-a", "--out-format=%n %l", "--stats"},
		`-a "--chmod=D750,F640" --numeric-ids`: {"-a", "--chmod=D750,F640", "--numeric-ids"},
		"-aHAX --timeout=600 --info=progress2": {"-aHAX", "--timeout=600", "--info=progress2"},
		"-aS -s --mkpath":                      {"-aS", "-s", "--mkpath"},
		"-aS --usermap=1000:oneadmin":          {"-aS", "--usermap=1000:oneadmin"},
	} {
		got, err := ParseArgs(in)
		if err != nil {
			t.Errorf("%q refused: %v", in, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q split into %q, want %q", in, got, want)
		}
	}
}

func TestParseArgsRefused(t *testing.T) {
	for in, want := range map[string]string{
		"-aS -e 'sh -c x'":                  "option -e",
		"-aSe ssh":                          "option -e",
		"-aS --rsh=ssh":                     "option --rsh is not allowed: it runs a program",
		"--rsync-path=x":                    "option --rsync-path",
		"--rsync-path x":                    "option --rsync-path",
		"-aS; rm -rf /":                     `';'`,
		"-aS && touch /tmp/x":               `'&'`,
		"-aS $(touch /tmp/x)":               `'$'`,
		"-aS `id`":                          "'`'",
		"-aS | tee":                         `'|'`,
		"-aS > /tmp/x":                      `'>'`,
		`-aS \-e`:                           `'\\'`,
		"-aS\n-e x":                         "control characters",
		"-aS\t-v":                           "control characters",
		"-aS 'unterminated":                 "unterminated",
		"-aS /etc/passwd":                   `"/etc/passwd" is not an option`,
		"-aS host:/x":                       "is not an option",
		"-aS --":                            `"--" is not allowed`,
		"--daemon":                          "option --daemon",
		"--server":                          "option --server",
		"--sender":                          "option --sender",
		"--config=/etc/x":                   "option --config",
		"--files-from=/etc/passwd":          "option --files-from",
		"--include-from=/x":                 "option --include-from",
		"--exclude-from=/x":                 "option --exclude-from",
		"--log-file=/tmp/x":                 "option --log-file",
		"--write-batch=/tmp/x":              "option --write-batch",
		"--only-write-batch=/tmp/x":         "option --only-write-batch",
		"--read-batch=/tmp/x":               "option --read-batch",
		"-ab --backup-dir=/tmp":             "option -b",
		"--backup-dir=/tmp":                 "option --backup-dir",
		"--temp-dir=/tmp":                   "option --temp-dir",
		"-aT /tmp":                          "option -T",
		"--partial-dir=/tmp":                "option --partial-dir",
		"--remove-source-files":             "option --remove-source-files",
		"--delete":                          "option --delete is not allowed: it deletes files",
		"--delete-after":                    "option --delete-after",
		"--del":                             "option --del",
		"--password-file=/x":                "option --password-file",
		"--compare-dest=/x":                 "option --compare-dest",
		"--copy-dest=/x":                    "option --copy-dest",
		"--link-dest=/x":                    "option --link-dest",
		"-aM--log-file=/tmp/x":              "option -M",
		"--remote-option=--log-file=/tmp/x": "option --remote-option",
		"-aL":                               "option -L",
		"--copy-links":                      "option --copy-links",
		"--old-args":                        "option --old-args",
		"--copy-as=root":                    "option --copy-as",
		"-an":                               "option -n",
		"--dry-run":                         "option --dry-run",
		"--exclude=vm.xml":                  "option --exclude",
		"-f '- vm.xml'":                     "option -f",
		"-aR":                               "option -R",
		"--no-delete":                       "option --no-delete",
		"--frobnicate":                      "option --frobnicate is not allowed",
		"-aQ":                               "option -Q",
		"--bwlimit":                         "needs a value",
		"-aB":                               "needs a value",
		"--stats=1":                         "takes no value",
		"--bwlimit --rsh=x":                 "needs a value, not \"--rsh=x\"",
		"-aB -e":                            "needs a value, not \"-e\"",
		"--chmod='D7;id'":                   "value \"D7;id\" of option --chmod",
		"--usermap=*:root":                  "of option --usermap",
		"-B '1 2'":                          "of option -B",
	} {
		_, err := ParseArgs(in)
		if err == nil {
			t.Errorf("%q accepted", in)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %q does not say %q", in, err, want)
		}
		if strings.ContainsAny(err.Error(), "\n\r") {
			t.Errorf("%q: error spans lines: %q", in, err)
		}
	}
}
