package test

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBenchmarkHostRBD prints the figures of the Ceph benchmark (run with ONEBACKUP_BENCH=1): a
// full and a 1 %-changed incremental backup of a 2 GiB RBD image holding 1 GiB, host side only
// (no upload), against the reference's way expressed as the commands it runs (`rbd export` to a
// raw file + `qemu-img convert`; `rbd export-diff` to a file, then one temporary file per write
// record fed to qemu-io through qemu-nbd over a qcow2 backed by the previous snapshot). Bytes
// read are the pool's read counter; memory is the peak RSS of the host program (without its
// qemu-img child) or of the reference's heaviest process.
func TestBenchmarkHostRBD(t *testing.T) {
	if os.Getenv("ONEBACKUP_BENCH") == "" {
		t.Skip("set ONEBACKUP_BENCH=1 to run the Ceph backup benchmark")
	}
	env := needKVM(t)
	needCeph(t)
	vm := cephVM(t, env, 711, 2048)
	name := vm.disk(0).rbd
	var script strings.Builder
	for i := 0; i < 16; i++ { // 1 GiB of data
		fmt.Fprintf(&script, "write -q -P 0x%02x %d %d\n", 0x10+i, int64(i)*128<<20, 64<<20)
	}
	if out, err := runStdin(script.String()+"quit\n", "runuser", "-u", "oneadmin", "--", "qemu-io", "-f", "raw", ceph.qemu(name)); err != nil {
		t.Fatal(err, out)
	}
	work := filepath.Join(h.state, "ceph-bench")
	os.RemoveAll(work)
	os.MkdirAll(work, 0o755)
	chownOneadmin(t, work)
	defer os.RemoveAll(work)
	xmlFile := filepath.Join(work, "vm.xml")
	host := func(sub string, li int) []string {
		os.WriteFile(xmlFile, vm.xml(bcfg{mode: "INCREMENT", li: li, tmMad: "ceph", disks: "0"}), 0o644)
		return []string{"runuser", "-u", "oneadmin", "--", hostBinPath, "host", sub, "--vm-xml", xmlFile, "--disks", "0", "--poweroff"}
	}
	staged := filepath.Join(vm.dir, "backup")
	measure := func(name string, outputs []string, argvs ...[]string) {
		poolRead0 := osdBytesRead(t)
		start := time.Now()
		var peak int64
		for _, argv := range argvs {
			rss, err := runPeakRSS("", argv...)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			peak = max(peak, rss)
		}
		el := time.Since(start)
		read := osdBytesRead(t) - poolRead0
		var out int64
		for _, o := range outputs {
			out += allocatedUnder(o)
		}
		line := fmt.Sprintf("BENCH %-40s wall %6.2f s  read from Ceph %7.1f MiB  peak RSS %6.1f MiB  written %7.1f MiB",
			name, el.Seconds(), float64(read)/(1<<20), float64(peak)/(1<<20), float64(out)/(1<<20))
		t.Log(line)
		fmt.Println(line)
	}

	measure("ours: full (snapshot, qcow2 from librbd)", []string{staged}, host("backup", -1))
	run(t, host("postbackup", -1)...)
	img := ceph.pool + "/" + name
	raw, full := filepath.Join(work, "disk.0.raw"), filepath.Join(work, "disk.0.0")
	measure("reference: rbd export + qemu-img convert", []string{raw, full},
		[]string{"runuser", "-u", "oneadmin", "--", "rbd", "--id", ceph.user, "--conf", ceph.conf, "--keyfile", ceph.keyfile, "--no-progress", "export", img + "@one_backup_0", raw},
		[]string{"runuser", "-u", "oneadmin", "--", "qemu-img", "convert", "-m", "4", "-O", "qcow2", raw, full})
	os.Remove(raw)

	for i := 0; i < 20; i++ { // 1 % of 2 GiB, scattered
		vm.write(t, 0, 0x60+i, int64(i)*97<<20, 1<<20)
	}
	measure("ours: 1 % increment (DiffIterate)", []string{staged}, host("backup", 0))
	// The reference's increment, from the same two snapshots.
	diff := filepath.Join(work, "disk.0.1.rdiff")
	inc := filepath.Join(work, "disk.0.1")
	measure("reference: export-diff + qemu-nbd/qemu-io", []string{diff, inc, filepath.Join(work, "records")},
		[]string{"runuser", "-u", "oneadmin", "--", "rbd", "--id", ceph.user, "--conf", ceph.conf, "--keyfile", ceph.keyfile, "--no-progress", "export-diff", "--from-snap", "one_backup_0", img + "@one_backup_1", diff})
	start := time.Now()
	rss := referenceApplyDiff(t, diff, inc, filepath.Join(work, "records"), ceph.qemu(name+"@one_backup_0"))
	line := fmt.Sprintf("BENCH %-40s wall %6.2f s  peak RSS %6.1f MiB  (one temporary file per record, applied with qemu-io over qemu-nbd)",
		"reference: … applying the diff", time.Since(start).Seconds(), float64(rss)/(1<<20))
	t.Log(line)
	fmt.Println(line)
	run(t, host("postbackup", 0)...)
}

// runPeakRSS runs argv and returns the peak RSS of its main program (the program after
// "runuser … --"), sampled from /proc while it runs, not counting its children.
func runPeakRSS(input string, argv ...string) (int64, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(input)
	var errb strings.Builder
	cmd.Stderr = &errb
	prog := argv[0]
	for i, a := range argv {
		if a == "--" && i+1 < len(argv) {
			prog = argv[i+1]
		}
	}
	peak := samplePeakRSS(filepath.Base(prog))
	if err := cmd.Run(); err != nil {
		peak()
		return 0, fmt.Errorf("%v: %s", err, errb.String())
	}
	return peak(), nil
}

// samplePeakRSS watches the processes named comm until the returned function is called, which
// returns the highest peak RSS (VmHWM) seen among them.
func samplePeakRSS(comm string) func() int64 {
	comm = comm[:min(15, len(comm))] // the kernel truncates comm to 15 bytes
	stop, done := make(chan struct{}), make(chan int64)
	go func() {
		var peak int64
		for {
			for pid := range procCmdlines() {
				if c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(c)) == comm {
					peak = max(peak, vmHWM(pid))
				}
			}
			select {
			case <-stop:
				done <- peak
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() int64 { close(stop); return <-done }
}

func vmHWM(pid int) int64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// osdBytesRead is the number of bytes the OSD has served to readers so far (its op_r_out_bytes
// counter, up to date at once, unlike the pool statistics the monitors aggregate).
func osdBytesRead(t *testing.T) int64 {
	out, err := exec.Command("ceph", "-c", ceph.conf, "tell", "osd.0", "perf", "dump").Output()
	if err != nil {
		t.Fatal(err)
	}
	var dump struct {
		OSD struct {
			ReadBytes int64 `json:"op_r_out_bytes"`
		} `json:"osd"`
	}
	if err := json.Unmarshal(out, &dump); err != nil {
		t.Fatal(err)
	}
	return dump.OSD.ReadBytes
}

// allocatedUnder is the allocated size of a file or of the files under a directory.
func allocatedUnder(p string) int64 {
	var n int64
	filepath.Walk(p, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return n
}

// referenceApplyDiff turns an rbd export-diff into a qcow2 increment the way OpenNebula's
// backup_rbd.rb does (spec host-backup §5.4): a qcow2 backed by the previous snapshot, served
// read-write by qemu-nbd, one temporary file per write record, one qemu-io script with a
// `write -s` per record and `write -z` per zero record. It returns qemu-io's peak RSS.
func referenceApplyDiff(t *testing.T, diff, out, records, backing string) int64 {
	f, err := os.Open(diff)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	os.MkdirAll(records, 0o755)
	r := bufio.NewReader(f)
	banner, _ := r.ReadString('\n')
	v2 := banner == "rbd diff v2\n"
	le := binary.LittleEndian
	u64 := func() uint64 { var b [8]byte; io.ReadFull(r, b[:]); return le.Uint64(b[:]) }
	var size uint64
	var script strings.Builder
	for n := 0; ; n++ {
		tag, err := r.ReadByte()
		if err != nil || tag == 'e' {
			break
		}
		if v2 {
			u64()
		}
		switch tag {
		case 'f', 't':
			var b [4]byte
			io.ReadFull(r, b[:])
			io.CopyN(io.Discard, r, int64(le.Uint32(b[:])))
		case 's':
			size = u64()
		case 'w':
			off, length := u64(), u64()
			rec := filepath.Join(records, fmt.Sprintf("rec-%d", n))
			w, _ := os.Create(rec)
			io.CopyN(w, r, int64(length))
			w.Close()
			fmt.Fprintf(&script, "write -s %s %d %d\n", rec, off, length)
		case 'z':
			off, length := u64(), u64()
			fmt.Fprintf(&script, "write -z %d %d\n", off, length)
		}
	}
	script.WriteString("flush\nquit\n")
	chownOneadmin(t, records)
	as := []string{"runuser", "-u", "oneadmin", "--"}
	run(t, append(as, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", backing, out, fmt.Sprint(size))...)
	sock := out + ".socket"
	nbd := exec.Command("runuser", "-u", "oneadmin", "--", "qemu-nbd", "-k", sock, "-f", "qcow2", "-t", out)
	if err := nbd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "qemu-nbd's socket", 10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil })
	cmd := append(as, "qemu-io", "-f", "raw", "nbd+unix:///?socket="+sock)
	rss, err := runPeakRSS(script.String(), cmd...)
	nbd.Process.Signal(syscall.SIGTERM)
	nbd.Wait()
	if err != nil {
		t.Fatal(err)
	}
	run(t, append(as, "qemu-img", "rebase", "-q", "-u", "-b", "", out)...)
	return rss
}
