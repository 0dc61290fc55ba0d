package file

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"time"

	"onebackup/internal/hostjob"
	"onebackup/internal/storage"
)

// imageInfo is what qemu-img info reports about the top image of a disk.
type imageInfo struct {
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	Backing     string `json:"full-backing-filename"`
	Specific    struct {
		Data struct {
			Bitmaps []bitmapInfo `json:"bitmaps"`
		} `json:"data"`
	} `json:"format-specific"`
}

type bitmapInfo struct {
	Name  string   `json:"name"`
	Flags []string `json:"flags"`
}

func (b bitmapInfo) inUse() bool {
	for _, f := range b.Flags {
		if f == "in-use" {
			return true
		}
	}
	return false
}

func qemuImgInfo(ctx context.Context, path string) (*imageInfo, error) {
	out, err := hostjob.Run(ctx, nil, "qemu-img", "info", "--output=json", "--force-share", path)
	if err != nil {
		return nil, err
	}
	var info imageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %v", path, err)
	}
	return &info, nil
}

// anchorName is the checkpoint / persistent bitmap of increment n of VM vid: libvirt's
// checkpoint and the bitmap in the image carry the same name, OpenNebula's.
func anchorName(vid, n int) string { return fmt.Sprintf("one-%d-%d", vid, n) }

// anchorID parses a checkpoint or bitmap name of this VM only: "one-5-3" is VM 5's, never 55's.
func anchorID(vid int, name string) (int, bool) {
	m := regexp.MustCompile(`^one-` + strconv.Itoa(vid) + `-([0-9]+)$`).FindStringSubmatch(name)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}

// ownBitmaps lists the ids of this VM's bitmaps in an image, ascending.
func ownBitmaps(info *imageInfo, vid int) []int {
	var ids []int
	for _, b := range info.Specific.Data.Bitmaps {
		if n, ok := anchorID(vid, b.Name); ok {
			ids = append(ids, n)
		}
	}
	sort.Ints(ids)
	return ids
}

// nbdExtent is one entry of nbdinfo --map.
type nbdExtent struct {
	Offset      int64  `json:"offset"`
	Length      int64  `json:"length"`
	Type        int    `json:"type"`
	Description string `json:"description"`
}

// dirtyExtents lists the dirty ranges of a bitmap context exported by an NBD server.
func dirtyExtents(ctx context.Context, uri, context string) ([]storage.Extent, error) {
	out, err := hostjob.Run(ctx, nil, "nbdinfo", "--json", "--map="+context, uri)
	if err != nil {
		return nil, err
	}
	var all []nbdExtent
	if err := json.Unmarshal(out, &all); err != nil {
		return nil, fmt.Errorf("nbdinfo map: %v", err)
	}
	var dirty []storage.Extent
	for _, e := range all {
		if e.Type&1 == 1 && e.Length > 0 {
			dirty = append(dirty, storage.Extent{Offset: e.Offset, Length: e.Length})
		}
	}
	return dirty, nil
}

// waitSocket waits until a unix socket appears (a server started by us is listening).
func waitSocket(ctx context.Context, path string, done <-chan struct{}) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
			return errors.New("qemu-nbd exited before listening")
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu-nbd did not create %s in time", path)
		}
	}
}

// mapExtents lists what a full backup of an image holds: its allocated data (explicit=false:
// a standalone full, where anything else reads as zeros anyway), or every range of the disk
// with the unallocated and zero ones as zero extents (explicit=true: a full inside a chain,
// which must override everything the increments below it hold).
func mapExtents(ctx context.Context, path, format string, explicit bool) ([]storage.Extent, error) {
	out, err := hostjob.Run(ctx, nil, "qemu-img", "map", "--output=json", "-U", "-f", format, path)
	if err != nil {
		return nil, err
	}
	var m []struct {
		Start  int64 `json:"start"`
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
		Zero   bool  `json:"zero"`
	}
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, fmt.Errorf("qemu-img map %s: %w", path, err)
	}
	var ext []storage.Extent
	for _, e := range m {
		data := e.Data && !e.Zero
		if !data && !explicit || e.Length <= 0 {
			continue
		}
		// Neighbours of the same kind merge: fewer, larger requests.
		if n := len(ext); n > 0 && ext[n-1].Zero == !data && ext[n-1].Offset+ext[n-1].Length == e.Start {
			ext[n-1].Length += e.Length
			continue
		}
		ext = append(ext, storage.Extent{Offset: e.Start, Length: e.Length, Zero: !data})
	}
	return ext, nil
}
