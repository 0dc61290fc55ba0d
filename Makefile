# onebackup — OpenNebula backup datastore drivers in Go.
GO        ?= go
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X onebackup/internal/cli.Version=$(VERSION)
BIN       := bin/onebackup
# The hypervisor-side binary links libvirt and librbd (cgo, needs libvirt-dev and librbd-dev):
# built by build-host only. go-ceph is built for the Ceph release Debian 12 ships (Pacific):
# without the tag it calls librbd functions that release does not have.
GOTAGS    := pacific
HOST_BIN  := bin/onebackup-host
HOST_LDFLAGS := -s -w -X onebackup/internal/hostcli.Version=$(VERSION)
TM_ACTIONS := prebackup prebackup_live postbackup postbackup_live
# Where `make install` lays out OpenNebula's remotes tree.
DESTDIR   ?=
REMOTES   ?= /var/lib/one/remotes
RESTIC    ?= $(CURDIR)/.cache/bin/restic
RESTIC_ACTIONS := backup backup_cancel rm stat monitor ls restore increment_flatten cp clone mkfs snap_delete snap_revert snap_flatten
RSYNC_ACTIONS  := backup backup_cancel rm stat monitor ls restore increment_flatten cp clone mkfs snap_delete snap_revert snap_flatten export

.PHONY: all build build-host test unit fuzz demo install deps deps-kvm deps-lxc deps-s3 deps-lvm bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/onebackup

build-host:
	CGO_ENABLED=1 $(GO) build -tags $(GOTAGS) -trimpath -ldflags '$(HOST_LDFLAGS)' -o $(HOST_BIN) ./cmd/onebackup-host

# Everything the tests need (packages, restic 0.18.1, the oneadmin user) is installed by the script.
deps:
	test/harness/setup-deps.sh

# libvirt, QEMU (with its rbd driver), libvirt-dev and librbd-dev for the host binary and the KVM tests.
deps-kvm:
	test/harness/setup-kvm.sh

# The lxc tools, busybox and mkfs for the LXC tests, and oneadmin's sudo rule for lxc-info.
deps-lxc:
	test/harness/setup-lxc.sh

# A single-node Ceph with radosgw, and versitygw, the two S3 servers of the restic S3 tests.
deps-s3:
	test/harness/setup-ceph.sh
	test/harness/setup-versitygw.sh

# lvm2 and thin-provisioning-tools for the LVM tests (real lvs and thin_delta output).
deps-lvm:
	test/harness/setup-lvm.sh

# Unit tests of every package that builds without cgo libraries (libvirt-dev, Ceph): the
# hypervisor sides that link them and the host binary are left to `make test`.
unit:
	$(GO) test $$($(GO) list -f '{{.ImportPath}} {{join .Deps " "}}' ./internal/... ./cmd/... | awk '!/libvirt\.org|github\.com\/ceph/ {print $$1}')

test: deps deps-kvm deps-lxc deps-s3 deps-lvm build build-host
	$(GO) test -tags $(GOTAGS) -count=1 -timeout 60m ./...
	$(MAKE) fuzz FUZZTIME=5s

# Every Fuzz target (parsers of what oned, URLs, RSYNC_ARGS and the host wire bring in) for
# FUZZTIME each, from its seed corpus in testdata/fuzz/; make test runs a short pass.
FUZZTIME ?= 1m
fuzz:
	@set -e; grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+' internal cmd | sed 's/:func /:/' | \
	while IFS=: read -r file fn; do echo "fuzz $$fn ($$(dirname $$file)) for $(FUZZTIME)"; \
	  $(GO) test -tags $(GOTAGS) -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) ./$$(dirname $$file) >/dev/null || \
	  { $(GO) test -tags $(GOTAGS) -run "^$$fn$$" ./$$(dirname $$file); exit 1; }; done

demo: deps build
	test/demo.sh

bench: deps build
	bench/run.sh
	bench/prune.sh

install: build
	install -d $(DESTDIR)$(REMOTES)/datastore/restic $(DESTDIR)$(REMOTES)/datastore/rsync
	install -m 0755 $(BIN) $(DESTDIR)$(REMOTES)/datastore/onebackup
	for a in $(RESTIC_ACTIONS); do ln -sfn ../onebackup $(DESTDIR)$(REMOTES)/datastore/restic/$$a; done
	for a in $(RSYNC_ACTIONS); do ln -sfn ../onebackup $(DESTDIR)$(REMOTES)/datastore/rsync/$$a; done
	for b in restic rsync; do ln -sfn onebackup $(DESTDIR)$(REMOTES)/datastore/$${b}_downloader.rb; done
	# Only the TM drivers of the matrix's served rows: the others keep OpenNebula's scripts.
	for m in $$($(BIN) tm drivers); do install -d $(DESTDIR)$(REMOTES)/tm/$$m; \
	  for a in $(TM_ACTIONS); do install -m 0755 drivers/tm/qcow2/$$a $(DESTDIR)$(REMOTES)/tm/$$m/$$a; done; done
	# In-place restore (onevm restore) only for the drivers whose every disk kind it serves.
	for m in $$($(BIN) tm drivers --restore); do install -d $(DESTDIR)$(REMOTES)/tm/$$m; \
	  install -m 0755 drivers/tm/qcow2/prebackup $(DESTDIR)$(REMOTES)/tm/$$m/restore; done
	if [ -x "$(HOST_BIN)" ]; then install -m 0755 $(HOST_BIN) $(DESTDIR)$(REMOTES)/tm/onebackup-host; fi
	if [ -x "$(RESTIC)" ]; then install -m 0755 $(RESTIC) $(DESTDIR)$(REMOTES)/datastore/restic/restic; fi

clean:
	rm -rf bin
