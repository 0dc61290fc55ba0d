package test

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// treeOf lists every path under dir with its size, to show a tree is unchanged.
func treeOf(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, _ := d.Info()
		out = append(out, fmt.Sprintf("%s %v %d", p, info.Mode(), info.Size()))
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// withBasePath replaces the BASE_PATH oned would send.
func withBasePath(ds, base string) string {
	return strings.Replace(ds, fmt.Sprintf("<BASE_PATH><![CDATA[/var/lib/one//datastores/%d]]>", 220), "<BASE_PATH><![CDATA["+base+"]]>", 1)
}

// hostileCase is one action run with hostile input that must be refused before anything runs.
type hostileCase struct {
	name, action string
	args         []string
	stdin        []byte
	want         string
}

func TestRsyncHostileInput(t *testing.T) {
	base := resetDS(t, 220)
	ds := rsyncDS(220, nil)
	stageBackup(t, stagingOf(80), 80, 0, []int{8}, 1)
	id, _ := h.rsyncBackup(t, ds, "hv1", 80, "", "")
	before := treeOf(t, base)
	good := backupArgs("hv1", 80, "")
	vm := vmXML(80, "")
	withArgs := func(v string) string { return rsyncDS(220, dsAttrs{"RSYNC_ARGS": v}) }
	bk := func(name string, ds string, want string) hostileCase {
		return hostileCase{name, "backup", good, backupStdin(ds, vm), want}
	}
	argv := func(name string, args []string, want string) hostileCase {
		return hostileCase{name, "backup", args, backupStdin(ds, vm), want}
	}
	image := func(snaps ...string) string {
		var incs []inc
		for i, s := range snaps {
			incs = append(incs, inc{i, s})
		}
		return imageXML(5, 80, "", incs, "")
	}
	rm := func(name, img, ds, want string) hostileCase {
		return hostileCase{name, "rm", []string{"5"}, dsMadStdin(img, ds), want}
	}
	stat := func(name, url, want string) hostileCase {
		img := fmt.Sprintf("<IMAGE><PATH><![CDATA[%s]]></PATH><SIZE>0</SIZE></IMAGE>", url)
		return hostileCase{"stat " + name, "stat", []string{"9"}, dsMadStdin(img, ds), want}
	}
	ls := func(name string, args []string, ds, img, want string) hostileCase {
		return hostileCase{name, "ls", args, backupStdin(ds, vm+img), want}
	}
	cancel := func(name string, args []string, stdin, want string) hostileCase {
		return hostileCase{name, "backup_cancel", args, []byte(stdin), want}
	}
	disk := "/var/lib/one/datastores/220/80/" + id + "/disk.0.0"

	cases := []hostileCase{
		{"backup not XML", "backup", good, []byte("%%% not xml"), "neither XML nor valid base64"},
		{"backup broken XML", "backup", good, []byte("<DS_DRIVER_ACTION_DATA><DATASTORE>"), "not valid XML"},
		{"backup no datastore", "backup", good, []byte("<DS_DRIVER_ACTION_DATA>" + vm + "</DS_DRIVER_ACTION_DATA>"), "no DATASTORE"},
		bk("no RSYNC_HOST", datastoreXML(220, "rsync", dsAttrs{"RSYNC_USER": "oneadmin"}), "RSYNC_HOST is not set"),
		bk("no BASE_PATH", withBasePath(ds, ""), "no BASE_PATH"),
		bk("RSYNC_HOST option", rsyncDS(220, dsAttrs{"RSYNC_HOST": "-oProxyCommand=touch /tmp/onebackup-pwned"}), "invalid RSYNC_HOST"),
		bk("RSYNC_HOST shell", rsyncDS(220, dsAttrs{"RSYNC_HOST": "bk1;touch /tmp/onebackup-pwned"}), "invalid RSYNC_HOST"),
		bk("RSYNC_USER spaces", rsyncDS(220, dsAttrs{"RSYNC_USER": "one admin"}), "invalid RSYNC_USER"),
		bk("RSYNC_ARGS -e", withArgs(`-aS -e 'sh -c x'`), "option -e"),
		bk("RSYNC_ARGS bundled e", withArgs(`-aSe sh`), "option -e"),
		bk("RSYNC_ARGS rsync-path", withArgs(`--rsync-path=x`), "option --rsync-path"),
		bk("RSYNC_ARGS shell", withArgs(`-aS; rm -rf /`), "';' is not allowed"),
		bk("RSYNC_ARGS substitution", withArgs(`-aS $(touch /tmp/onebackup-pwned)`), "'$' is not allowed"),
		bk("RSYNC_ARGS newline", withArgs("-aS\n-e x"), "control characters"),
		bk("RSYNC_ARGS spaces in value", withArgs(`-aS '--chmod=D7 ;id'`), "of option --chmod"),
		bk("RSYNC_ARGS file", withArgs(`-aS /etc/passwd`), "is not an option"),
		bk("RSYNC_ARGS delete", withArgs(`-aS --delete`), "option --delete"),
		bk("RSYNC_ARGS log-file", withArgs(`-aS --log-file=/tmp/x`), "option --log-file"),
		bk("RSYNC_ARGS remote option", withArgs(`-aS -M--log-file=/tmp/x`), "option -M"),
		bk("RSYNC_NICE", rsyncDS(220, dsAttrs{"RSYNC_NICE": "5; id"}), "invalid RSYNC_NICE"),
		bk("BASE_PATH spaces", withBasePath(ds, "/var/lib/one/data stores/220"), "BASE_PATH"),
		bk("BASE_PATH shell", withBasePath(ds, "/var/lib/one/$(touch /tmp/onebackup-pwned)/220"), "BASE_PATH"),
		bk("BASE_PATH dotdot", withBasePath(ds, "/var/lib/one/datastores/../../../etc"), "'..' is not allowed"),
		argv("vm dir dotdot", []string{"hv1:/var/lib/one/datastores/0/../../../../etc", "0", "one-80", "-", "80", "0"}, "'..' is not allowed"),
		argv("vm dir newline", []string{"hv1:/var/lib/one/datastores/0/80\n/x", "0", "one-80", "-", "80", "0"}, "control characters"),
		argv("host shell", []string{"hv1;id:" + vmDir(80), "0", "one-80", "-", "80", "0"}, "invalid host"),
		argv("host option", []string{"-oProxyCommand=id:" + vmDir(80), "0", "one-80", "-", "80", "0"}, "unknown shorthand flag"),
		argv("deploy id spaces", []string{"hv1:" + vmDir(80), "0", "one 80", "-", "80", "0"}, "invalid deploy id"),
		argv("vm id shell", []string{"hv1:" + vmDir(80), "0", "one-80", "-", "80;id", "0"}, "invalid VM id"),
		argv("vm id dotdot", []string{"hv1:" + vmDir(80), "0", "one-80", "-", "..", "0"}, "invalid VM id"),
		argv("job id", []string{"hv1:" + vmDir(80), "0", "one-80", "7 8", "80", "0"}, "invalid backup job id"),
		argv("vm id mismatch", []string{"hv1:" + vmDir(80), "0", "one-80", "-", "81", "0"}, "does not match"),
		{"backup bridge shell", "backup", good, backupStdin(ds, vmXML(80, "hv2;touch /tmp/onebackup-pwned")), "invalid LAST_BRIDGE"},

		{"rm bad base64", "rm", []string{"5"}, []byte("!!!!"), "neither XML nor valid base64"},
		{"rm image id", "rm", []string{"5;id"}, dsMadStdin(image(id), ds), "invalid image id"},
		rm("rm dotdot", image(".."), ds, "invalid rsync snapshot id"),
		rm("rm dotdot in chain", image(id, "../81"), ds, "invalid rsync snapshot id"),
		rm("rm slash", image("a/b"), ds, "invalid rsync snapshot id"),
		rm("rm spaces", image("a b"), ds, "invalid rsync snapshot id"),
		rm("rm semicolon", image("x;id"), ds, "invalid rsync snapshot id"),
		rm("rm newline", image("ab\ncd"), ds, "invalid rsync snapshot id"),
		rm("rm empty", imageXML(5, 80, "", nil, ""), ds, "neither SOURCE nor BACKUP_INCREMENTS"),
		rm("rm no VM id", imageXML(5, -1, "", []inc{{0, id}}, ""), ds, "VMS/ID"),
		rm("rm VM id shell", strings.Replace(image(id), "<VMS><ID>80</ID>", "<VMS><ID>80;id</ID>", 1), ds, "invalid image VMS/ID"),
		rm("rm bad RSYNC_ARGS", image(id), withArgs("-e x"), "option -e"),

		{"monitor ds id", "monitor", []string{"220 x"}, dsMadStdin(ds), "invalid datastore id"},
		{"monitor no host", "monitor", []string{"220"}, dsMadStdin(datastoreXML(220, "rsync", nil)), "RSYNC_HOST is not set"},
		{"monitor base path", "monitor", []string{"220"}, dsMadStdin(withBasePath(ds, "/x;touch /tmp/onebackup-pwned")), "BASE_PATH"},

		stat("outside BASE_PATH", "rsync://220//0:"+id+"/etc/220/80/"+id+"/disk.0.0", "is not in backup"),
		stat("other dir", "rsync://220//0:"+id+"/var/lib/one/datastores/220/80/abcdef/disk.0.0", "is not in backup"),
		stat("other datastore", "rsync://221//0:"+id+"/var/lib/one/datastores/221/80/"+id+"/disk.0.0", "names datastore 221"),
		stat("dotdot", "rsync://220//0:"+id+"/var/lib/one/datastores/220/80/"+id+"/../../../../../etc/80/x/disk.0.0", "'..' is not allowed"),
		stat("snap dotdot", "rsync://220//0:../"+id+disk, "invalid"),
		stat("snap shell", "rsync://220//0:$(id)"+disk, "invalid rsync snapshot id"),
		stat("not a disk", "rsync://220//0:"+id+"/var/lib/one/datastores/220/80/"+id+"/vm.xml", "not a disk file"),
		stat("restic scheme", "restic://220//0:"+id+"aa/var/lib/one/datastores/0/80/backup/disk.0.0", "restic URL cannot be read"),
		stat("job id", "rsync://220/1;id/0:"+id+disk, "invalid backup job id"),
		stat("spaces", "rsync://220//0:"+id+"/var/lib/one/datastores/220/80/"+id+" x/disk.0.0", "invalid backup URL"),

		ls("ls dotdot", []string{"-i", "-1"}, ds, image(".."), "invalid rsync snapshot id"),
		ls("ls shell", []string{"-i", "0"}, ds, image(id, "$(id)"), "invalid rsync snapshot id"),
		ls("ls increment", []string{"-i", "1;id"}, ds, image(id), "invalid argument"),
		ls("ls unknown increment", []string{"-i", "0"}, ds, imageXML(5, 80, "", []inc{{3, id}, {4, id}}, ""), "no increment 0"),
		ls("ls bad RSYNC_ARGS", nil, withArgs("--files-from=/etc/passwd"), image(id), "option --files-from"),

		cancel("cancel deploy id", []string{"hv1:" + vmDir(80), "one-80;id"}, vm, "invalid deploy id"),
		cancel("cancel host", []string{"hv1 x:" + vmDir(80), "one-80"}, vm, "invalid host"),
		cancel("cancel VM id", []string{"hv1:" + vmDir(80), "one-80"}, "<VM><ID>80 x</ID></VM>", "invalid VM ID"),
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.refused(t, "rsync", tc.action, tc.args, tc.stdin, tc.want)
		})
	}

	// A backup job image without VMS/ID cannot be located in the rsync layout: refused before
	// anything runs.
	h.refused(t, "rsync", "rm", []string{"5"}, dsMadStdin(imageXML(5, -1, "3", []inc{{0, id}}, ""), ds), "no VMS/ID")

	if after := treeOf(t, base); after != before {
		t.Errorf("refused actions changed the datastore:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := os.Stat("/tmp/onebackup-pwned"); err == nil {
		t.Errorf("/tmp/onebackup-pwned exists: a hostile value was run")
	}
}
