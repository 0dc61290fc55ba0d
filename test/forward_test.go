package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// <MAD>_FORWARD_AGENT=NO (spec W6): the upload does not carry the frontend's ssh agent to the VM
// host. Without a key of its own the host cannot log in to the backup server and the backup
// fails saying so, leaving nothing behind; once the host has its own key, restricted on the
// server the way the README recommends, the backup succeeds.
func TestUploadWithoutAgentForwarding(t *testing.T) {
	for _, c := range []struct {
		backend, restriction string
		ds, vm               int
	}{
		{"restic", `restrict,command="internal-sftp"`, 141, 91},
		{"rsync", `restrict`, 218, 81},
	} {
		t.Run(c.backend, func(t *testing.T) {
			base := resetDS(t, c.ds)
			st := stageBackup(t, stagingOf(c.vm), c.vm, 0, []int{8}, 2)
			attrs := dsAttrs{strings.ToUpper(c.backend) + "_FORWARD_AGENT": "NO"}
			ds := resticDS(c.ds, attrs)
			if c.backend == "rsync" {
				ds = rsyncDS(c.ds, attrs)
			}
			args, stdin := backupArgs("hv1", c.vm, ""), backupStdin(ds, vmXML(c.vm, ""))

			r := h.driver(t, c.backend, "backup", args, stdin)
			want := fmt.Sprintf("has no ssh key of its own for bk1 (%s_FORWARD_AGENT=NO)", strings.ToUpper(c.backend))
			if r.code == 0 || !oneFailure(r.stderr, want) {
				t.Fatalf("backup without a forwarded agent nor a host key: exit %d, stderr %q: want %q", r.code, r.stderr, want)
			}
			if c.backend == "restic" {
				if snaps := h.snapshots(t, fmt.Sprintf("%s/%d", base, c.vm)); len(snaps) != 0 {
					t.Errorf("failed backup left snapshots %v", snaps)
				}
			} else if left := dirNames(t, fmt.Sprintf("%s/%d", base, c.vm)); len(left) != 0 {
				t.Errorf("failed backup left %v", left)
			}

			h.giveHostKey(t, "bk1", c.restriction)
			out := h.mustDriver(t, c.backend, "backup", args, stdin)
			id := strings.Fields(out)[0]
			if c.backend == "restic" {
				h.checkSnapshot(t, fmt.Sprintf("%s/%d", base, c.vm), id, c.vm, st)
			} else {
				checkRsyncBackup(t, base, c.vm, id, st)
			}
		})
	}
}

// giveHostKey gives the "hosts" a key of their own for server, accepted there with the given
// authorized_keys options, until the test ends. All harness hosts share oneadmin's home, so the
// frontend has it too; it still logs in with the agent's key, which ssh offers first.
func (h *harness) giveHostKey(t *testing.T, server, options string) {
	t.Helper()
	home := strings.TrimSpace(run(t, "getent", "passwd", "oneadmin"))
	home = strings.Split(home, ":")[5]
	key := filepath.Join(home, ".ssh", "onebackup_test_host_key")
	os.Remove(key)
	os.Remove(key + ".pub")
	run(t, "runuser", "-u", "oneadmin", "--", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "host key", "-f", key)
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(home, ".ssh", "config")
	akPath := filepath.Join(h.state, "authorized_keys")
	cfg, err1 := os.ReadFile(cfgPath)
	ak, err2 := os.ReadFile(akPath)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	t.Cleanup(func() {
		os.WriteFile(cfgPath, cfg, 0o600)
		os.WriteFile(akPath, ak, 0o644)
		os.Remove(key)
		os.Remove(key + ".pub")
	})
	// First match wins in ssh_config, and IdentityFile adds to the list: put ours first.
	hostBlock := fmt.Sprintf("Host %s\n  IdentityFile %s\n", server, key)
	if err := os.WriteFile(cfgPath, append([]byte(hostBlock), cfg...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(akPath, append(append([]byte(nil), ak...), []byte(options+" "+string(pub))...), 0o644); err != nil {
		t.Fatal(err)
	}
}
