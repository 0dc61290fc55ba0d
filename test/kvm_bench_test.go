package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBenchmarkHostFile prints the figures of the benchmark (run with ONEBACKUP_BENCH=1):
// a live full backup of a 2 GiB qcow2 disk holding 1 GiB of data, a live CBT increment after
// 1 % of the disk changed and a power-off full, host side only (onebackup-host, no upload),
// against a plain `qemu-img convert` of the disk. Bytes read are the block device's sectors read with a cold
// page cache.
func TestBenchmarkHostFile(t *testing.T) {
	if os.Getenv("ONEBACKUP_BENCH") == "" {
		t.Skip("set ONEBACKUP_BENCH=1 to run the host-side backup benchmark")
	}
	env := needKVM(t)
	vm := newVM(t, env, 590, &tdisk{id: 0, format: "qcow2", sizeMiB: 2048})
	disk := filepath.Join(vm.dir, "disk.0")
	for i := 0; i < 16; i++ { // 1 GiB of data
		run(t, "runuser", "-u", "oneadmin", "--", "qemu-io", "-f", "qcow2", "-c",
			fmt.Sprintf("write -P 0x%02x %d %d", 0x10+i, int64(i)*128<<20, 64<<20), disk)
	}
	vm.start(t)
	xmlFile := filepath.Join(h.state, "vm-590.xml")
	defer os.Remove(xmlFile)
	host := func(sub string, li int) {
		os.WriteFile(xmlFile, vm.xml(bcfg{mode: "INCREMENT", li: li, incMode: "CBT", live: true}), 0o644)
		run(t, "runuser", "-u", "oneadmin", "--", hostBinPath, "host", sub, "--vm-xml", xmlFile, "--disks", "0", "--live")
	}
	measure := func(name string, f func()) {
		run(t, "sync")
		os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o644)
		r0 := sectorsRead(t)
		start := time.Now()
		f()
		el := time.Since(start)
		read := (sectorsRead(t) - r0) * 512
		var staged int64
		filepath.Walk(filepath.Join(vm.dir, "backup"), func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() && strings.HasPrefix(fi.Name(), "disk.") {
				staged += fi.Sys().(*syscall.Stat_t).Blocks * 512
			}
			return nil
		})
		var scratch int64
		filepath.Walk(filepath.Join(vm.dir, "tmp"), func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				scratch += fi.Sys().(*syscall.Stat_t).Blocks * 512
			}
			return nil
		})
		line := fmt.Sprintf("BENCH %-34s wall %6.2f s  read from disk %7.1f MiB  staged %7.1f MiB  scratch %5.1f KiB",
			name, el.Seconds(), float64(read)/(1<<20), float64(staged)/(1<<20), float64(scratch)/1024)
		t.Log(line)
		fmt.Println(line)
	}
	measure("live full (push + checkpoint)", func() { host("backup", -1) })
	host("postbackup", -1)
	for i := 0; i < 20; i++ { // 1 % of 2 GiB, scattered
		vm.write(t, 0, 0x60+i, int64(i)*97<<20, 1<<20)
	}
	measure("live CBT increment (1 % changed)", func() { host("backup", 0) })
	host("postbackup", 0)
	out := filepath.Join(h.state, "bench-convert.qcow2")
	defer os.Remove(out)
	measure("qemu-img convert -U of the disk", func() {
		if o, err := exec.Command("qemu-img", "convert", "-U", "-O", "qcow2", disk, out).CombinedOutput(); err != nil {
			t.Fatal(err, string(o))
		}
	})
	var st syscall.Stat_t
	syscall.Stat(out, &st)
	fmt.Printf("BENCH qemu-img convert output %.1f MiB\n", float64(st.Blocks*512)/(1<<20))

	// Powered off, the full goes through the extents writer (qemu-img map + copy-on-read)
	// instead of QEMU's push job; against the reference's plain convert of the stopped disk.
	vm.stop(t)
	os.WriteFile(xmlFile, vm.xml(bcfg{mode: "FULL", li: -1}), 0o644)
	measure("power-off full (extents writer)", func() {
		run(t, "runuser", "-u", "oneadmin", "--", hostBinPath, "host", "backup", "--vm-xml", xmlFile, "--disks", "0", "--poweroff")
	})
	run(t, "runuser", "-u", "oneadmin", "--", hostBinPath, "host", "postbackup", "--vm-xml", xmlFile, "--disks", "0", "--poweroff")
	os.Remove(out)
	measure("qemu-img convert of the stopped disk", func() {
		if o, err := exec.Command("qemu-img", "convert", "-O", "qcow2", disk, out).CombinedOutput(); err != nil {
			t.Fatal(err, string(o))
		}
	})
}

// sectorsRead sums sectors read over whole disks in /proc/diskstats.
func sectorsRead(t *testing.T) int64 {
	data, err := os.ReadFile("/proc/diskstats")
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		name := f[2]
		if strings.HasPrefix(name, "loop") || strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "dm-") {
			continue
		}
		if _, err := os.Stat("/sys/block/" + name); err != nil {
			continue // a partition
		}
		n, _ := strconv.ParseInt(f[5], 10, 64)
		total += n
	}
	return total
}
