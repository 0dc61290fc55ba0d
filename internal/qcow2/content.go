package qcow2

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
)

// Guest-visible content. A chain of backup files is rebuilt into one image by qemu-img; to know
// that the image holds what the files hold, both sides are reduced to one digest of what a guest
// would read: the sum (mod 2^256) of SHA-256(cluster index, cluster data) over every cluster
// that does not read as zeros. A sum, unlike a running hash, does not depend on the order the
// clusters are visited in, so the chain side can be computed newest file first, skipping the
// clusters a newer file already provides, without ever building the merged image itself.

// ErrUnsupported marks images this reader does not interpret (compressed clusters, external
// data files, extended L2 entries, encryption, files of a chain that differ in cluster or
// virtual size): their content is not checked.
var ErrUnsupported = errors.New("qcow2 layout not supported by the content check")

// Digest is a content digest.
type Digest [4]uint64

func (d *Digest) add(h [32]byte) {
	var c uint64
	for i := 0; i < 4; i++ {
		d[i], c = bits.Add64(d[i], binary.LittleEndian.Uint64(h[8*i:]), c)
	}
}

// Geometry is what makes two digests comparable: the same virtual size, the same cluster size.
type Geometry struct{ Size, ClusterSize int64 }

func (d Digest) String() string { return fmt.Sprintf("%016x%016x%016x%016x", d[3], d[2], d[1], d[0]) }

// Header fields and L1/L2 entry bits, from QEMU's docs/interop/qcow2.txt.
const (
	magic          = 0x514649fb // "QFI\xfb"
	offsetMask     = 0x00fffffffffffe00
	l2Compressed   = 1 << 62
	l2Zero         = 1 // version 3: the cluster reads as zeros
	featCorrupt    = 1 << 1
	featExtData    = 1 << 2
	featExtendedL2 = 1 << 4
	maxL1Bytes     = 32 << 20
	maxClusters    = 1 << 30 // 64 TiB at 64 KiB clusters: bounds the chain's bitmap to 128 MiB
)

// fileLayer is one qcow2 file opened for reading its own clusters (never its backing file).
type fileLayer struct {
	r           io.ReaderAt
	clusterBits uint
	size        int64
	l1          []uint64
	v3          bool
}

func (l *fileLayer) clusterSize() int64 { return 1 << l.clusterBits }

// readFileLayer parses the header and the L1 table of r.
func readFileLayer(r io.ReaderAt) (*fileLayer, error) {
	var h [104]byte
	n, err := r.ReadAt(h[:], 0)
	if n < 72 {
		if err == nil || err == io.EOF {
			err = errors.New("file too short for a qcow2 header")
		}
		return nil, err
	}
	be := binary.BigEndian
	if be.Uint32(h[0:]) != magic {
		return nil, errors.New("not a qcow2 image")
	}
	l := &fileLayer{r: r}
	switch v := be.Uint32(h[4:]); v {
	case 2:
	case 3:
		if n < 104 {
			return nil, errors.New("qcow2 version 3 header too short")
		}
		l.v3 = true
		incompat := be.Uint64(h[72:])
		if incompat&featCorrupt != 0 {
			return nil, errors.New("the image is marked corrupt")
		}
		if incompat&(featExtData|featExtendedL2) != 0 {
			return nil, ErrUnsupported
		}
	default:
		return nil, fmt.Errorf("qcow2 version %d", v)
	}
	l.clusterBits = uint(be.Uint32(h[20:]))
	if l.clusterBits < 9 || l.clusterBits > 21 {
		return nil, fmt.Errorf("invalid cluster bits %d", l.clusterBits)
	}
	if be.Uint32(h[32:]) != 0 {
		return nil, ErrUnsupported // encrypted
	}
	size := be.Uint64(h[24:])
	if size > uint64(maxClusters)<<l.clusterBits {
		return nil, fmt.Errorf("virtual size %d is beyond what the content check reads", size)
	}
	l.size = int64(size)
	l1Size := int64(be.Uint32(h[36:]))
	perL2 := l.clusterSize() / 8
	need := (l.size + perL2*l.clusterSize() - 1) / (perL2 * l.clusterSize())
	if l1Size < need || l1Size*8 > maxL1Bytes {
		return nil, fmt.Errorf("L1 table of %d entries for a %d-byte image", l1Size, l.size)
	}
	buf := make([]byte, need*8)
	if _, err := r.ReadAt(buf, int64(be.Uint64(h[40:]))); err != nil {
		return nil, fmt.Errorf("cannot read the L1 table: %w", err)
	}
	l.l1 = make([]uint64, need)
	for i := range l.l1 {
		l.l1[i] = be.Uint64(buf[8*i:])
	}
	return l, nil
}

// clusters calls fn for every cluster the file holds itself, in guest order: zero for one that
// reads as zeros, else its data (cut at the virtual size; valid during the call only).
func (l *fileLayer) clusters(fn func(idx int64, zero bool, data []byte) error) error {
	cs := l.clusterSize()
	perL2 := cs / 8
	nClusters := (l.size + cs - 1) / cs
	table := make([]byte, cs)
	data := make([]byte, cs)
	for i, e := range l.l1 {
		off := int64(e & offsetMask)
		if off == 0 {
			continue
		}
		if _, err := l.r.ReadAt(table, off); err != nil {
			return fmt.Errorf("cannot read L2 table %d: %w", i, err)
		}
		for j := int64(0); j < perL2; j++ {
			idx := int64(i)*perL2 + j
			if idx >= nClusters {
				break
			}
			e := binary.BigEndian.Uint64(table[8*j:])
			if e&l2Compressed != 0 {
				return ErrUnsupported
			}
			if l.v3 && e&l2Zero != 0 {
				if err := fn(idx, true, nil); err != nil {
					return err
				}
				continue
			}
			host := int64(e & offsetMask)
			if host == 0 {
				continue
			}
			n := min(cs, l.size-idx*cs)
			if _, err := l.r.ReadAt(data[:n], host); err != nil {
				return fmt.Errorf("cannot read cluster %d: %w", idx, err)
			}
			if err := fn(idx, false, data[:n]); err != nil {
				return err
			}
		}
	}
	return nil
}

// blockHash is a cluster's term of the digest; clusters of zeros have none.
func blockHash(idx int64, data []byte) ([32]byte, bool) {
	if isZero(data) {
		return [32]byte{}, false
	}
	h := sha256.New()
	var ib [8]byte
	binary.LittleEndian.PutUint64(ib[:], uint64(idx))
	h.Write(ib[:])
	h.Write(data)
	var out [32]byte
	h.Sum(out[:0])
	return out, true
}

var zeros = make([]byte, 1<<21)

func isZero(b []byte) bool { return bytes.Equal(b, zeros[:len(b)]) }

func openFileLayer(path string) (*fileLayer, *os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	l, err := readFileLayer(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, f, nil
}

// ImageDigest is the content digest of a standalone image (what it does not hold reads as
// zeros).
func ImageDigest(path string) (Digest, Geometry, error) {
	l, f, err := openFileLayer(path)
	if err != nil {
		return Digest{}, Geometry{}, err
	}
	defer f.Close()
	var d Digest
	err = l.clusters(func(idx int64, zero bool, data []byte) error {
		if h, ok := blockHash(idx, data); !zero && ok {
			d.add(h)
		}
		return nil
	})
	return d, Geometry{l.size, l.clusterSize()}, err
}

// RawDigest is the content digest of a raw image read in blocks of clusterSize, skipping the
// holes of a sparse file.
func RawDigest(path string, clusterSize int64) (Digest, Geometry, error) {
	f, err := os.Open(path)
	if err != nil {
		return Digest{}, Geometry{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Digest{}, Geometry{}, err
	}
	var d Digest
	buf := make([]byte, clusterSize)
	for off := int64(0); off < st.Size(); {
		data, err := f.Seek(off, seekData)
		if err != nil { // ENXIO: no data after off
			break
		}
		idx := data / clusterSize
		n := min(clusterSize, st.Size()-idx*clusterSize)
		if _, err := f.ReadAt(buf[:n], idx*clusterSize); err != nil {
			return Digest{}, Geometry{}, fmt.Errorf("cannot read %s: %w", path, err)
		}
		if h, ok := blockHash(idx, buf[:n]); ok {
			d.add(h)
		}
		off = (idx + 1) * clusterSize
	}
	return d, Geometry{st.Size(), clusterSize}, nil
}

// seekData is lseek's SEEK_DATA (Linux).
const seekData = 3

// ChainDigest is the content digest of files (oldest first) rebuilt as one image, each file
// over the ones before it, computed from the files' own clusters.
func ChainDigest(files []string) (Digest, Geometry, error) {
	var d Digest
	var covered []uint64
	geo := Geometry{Size: -1}
	for i := len(files) - 1; i >= 0; i-- {
		l, f, err := openFileLayer(files[i])
		if err != nil {
			return Digest{}, Geometry{}, err
		}
		if geo.Size < 0 {
			geo = Geometry{l.size, l.clusterSize()}
			covered = make([]uint64, ((geo.Size+geo.ClusterSize-1)/geo.ClusterSize+63)/64)
		} else if (Geometry{l.size, l.clusterSize()}) != geo {
			f.Close()
			return Digest{}, Geometry{}, ErrUnsupported
		}
		err = l.clusters(func(idx int64, zero bool, data []byte) error {
			w, b := idx/64, uint64(1)<<(idx%64)
			if covered[w]&b != 0 {
				return nil
			}
			covered[w] |= b
			if h, ok := blockHash(idx, data); !zero && ok {
				d.add(h)
			}
			return nil
		})
		f.Close()
		if err != nil {
			return Digest{}, Geometry{}, err
		}
	}
	return d, geo, nil
}
