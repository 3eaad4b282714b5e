/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * p2pgpu: user API of the p2plab GPU-like device driver (/dev/p2pgpuN).
 *
 * All structures are naturally aligned with explicit padding, so their layout
 * is the same for 32- and 64-bit user space; the Rust guest runner mirrors
 * them field by field. Sizes are fixed; a field marked "out" is written by
 * the driver, "in" is read by it. Padding and reserved fields must be zero.
 *
 * Bus addresses are the addresses a device puts on the PCIe bus (the guest
 * runs without an IOMMU, so they equal what lspci/sysfs "resource" shows for
 * a BAR). VRAM is BAR2 of the device.
 */
#ifndef _UAPI_P2PGPU_H
#define _UAPI_P2PGPU_H

#include <linux/const.h>
#include <linux/ioctl.h>
#include <linux/types.h>

#define P2PGPU_IOC_MAGIC	0xB9

/* PCI identity the driver binds (lab-only vendor ID, see p2plab-gpu). */
#define P2PGPU_PCI_VENDOR_ID	0x2b2b
#define P2PGPU_PCI_DEVICE_ID	0x0001

#define P2PGPU_DIGEST_SIZE	32
#define P2PGPU_CHECKSUM_SHA256	1

/* Largest length of one P2PGPU_IOC_COPY / COPY_*_USER call (1 GiB). */
#define P2PGPU_COPY_MAX		_BITULL(30)
/* Timeout used when timeout_ms is 0, and the largest accepted. */
#define P2PGPU_TIMEOUT_DEFAULT_MS	30000
#define P2PGPU_TIMEOUT_MAX_MS		600000

/* p2pgpu_info.flags */
#define P2PGPU_INFO_P2PMEM	_BITUL(0) /* p2pmem slice published */

/**
 * struct p2pgpu_info - P2PGPU_IOC_GET_INFO
 * @vram_size:      out: BAR2 size in bytes
 * @bar2_bus_addr:  out: bus address of BAR2 (what peers put in their PRPs)
 * @bar2_phys_addr: out: CPU physical address of BAR2
 * @p2pmem_offset:  out: offset in BAR2 of the published p2pmem slice
 * @p2pmem_size:    out: size of that slice (0: none published)
 * @version:        out: device VERSION register (major << 16 | minor)
 * @flags:          out: P2PGPU_INFO_*
 * @copy_bounce_size: out: bytes one COPY_*_USER step moves through RAM
 * @reserved:       out: zero
 */
struct p2pgpu_info {
	__u64 vram_size;
	__u64 bar2_bus_addr;
	__u64 bar2_phys_addr;
	__u64 p2pmem_offset;
	__u64 p2pmem_size;
	__u32 version;
	__u32 flags;
	__u32 copy_bounce_size;
	__u32 reserved;
};

/**
 * struct p2pgpu_checksum - P2PGPU_IOC_CHECKSUM: device-side SHA-256 of VRAM
 * @offset:  in: VRAM offset
 * @len:     in: bytes (0 allowed; offset + len <= vram_size)
 * @algo:    out: P2PGPU_CHECKSUM_SHA256
 * @status:  out: the device's CK_STATUS register at completion
 * @digest:  out: digest bytes
 */
struct p2pgpu_checksum {
	__u64 offset;
	__u64 len;
	__u32 algo;
	__u32 status;
	__u8 digest[P2PGPU_DIGEST_SIZE];
};

/**
 * struct p2pgpu_copy - P2PGPU_IOC_COPY: copy engine between two bus addresses
 * @src:        in: source bus address (guest RAM, VRAM, a peer's BAR)
 * @dst:        in: destination bus address
 * @len:        in: bytes, 1..P2PGPU_COPY_MAX
 * @timeout_ms: in: 0 = P2PGPU_TIMEOUT_DEFAULT_MS
 * @status:     out: the descriptor's status word (bit 0 done, bit 1 error,
 *              bits 15:8 error code); the ioctl returns -EIO on error
 */
struct p2pgpu_copy {
	__u64 src;
	__u64 dst;
	__u64 len;
	__u32 timeout_ms;
	__u32 status;
};

/**
 * struct p2pgpu_copy_user - P2PGPU_IOC_COPY_FROM_USER / _TO_USER
 * @user_addr:  in: user buffer
 * @dev_addr:   in: bus address of the device-side end (e.g. bar2_bus_addr +
 *              offset, or a peer's BAR)
 * @len:        in: bytes, 1..P2PGPU_COPY_MAX
 * @timeout_ms: in: per step; 0 = P2PGPU_TIMEOUT_DEFAULT_MS
 * @status:     out: status word of the last descriptor
 *
 * FROM_USER: user buffer -> kernel DMA buffer in guest RAM -> (copy engine)
 * dev_addr. TO_USER: dev_addr -> (copy engine) DMA buffer -> user buffer.
 * Moves copy_bounce_size bytes per step.
 */
struct p2pgpu_copy_user {
	__u64 user_addr;
	__u64 dev_addr;
	__u64 len;
	__u32 timeout_ms;
	__u32 status;
};

/**
 * struct p2pgpu_export_dmabuf - P2PGPU_IOC_EXPORT_DMABUF
 * @offset: in: VRAM offset, page aligned
 * @len:    in: bytes, page aligned, non-zero, offset + len <= vram_size
 * @flags:  in: zero
 * @fd:     out: dma-buf file descriptor (O_RDWR | O_CLOEXEC)
 *
 * The dma-buf has no struct pages: importers must allow peer-to-peer and
 * support revocation (invalidate_mappings), as for VFIO's dma-bufs.
 */
struct p2pgpu_export_dmabuf {
	__u64 offset;
	__u64 len;
	__u32 flags;
	__s32 fd;
};

/* p2pgpu_dmabuf_selftest.flags */
#define P2PGPU_SELFTEST_PEER	_BITUL(0) /* attach to the peer_* device */

/**
 * struct p2pgpu_dmabuf_selftest - P2PGPU_IOC_DMABUF_SELFTEST
 * @fd:          in: a dma-buf fd
 * @flags:       in: P2PGPU_SELFTEST_*
 * @peer_domain: in: PCI domain of the importing device (with _PEER)
 * @peer_bdf:    in: bus << 8 | devfn of the importing device (with _PEER)
 * @dma_addr:    out: DMA address of the first mapped segment
 * @dma_len:     out: total mapped length
 * @nents:       out: number of DMA segments
 * @contiguous:  out: 1 if the segments are one contiguous DMA range
 *
 * Attaches the dma-buf to this device (or the given peer) as a dynamic,
 * peer-to-peer capable importer, maps it, records the result, unmaps and
 * detaches. For a dma-buf from EXPORT_DMABUF and a peer below the same
 * switch, dma_addr == bar2_bus_addr + offset.
 */
struct p2pgpu_dmabuf_selftest {
	__s32 fd;
	__u32 flags;
	__u32 peer_domain;
	__u32 peer_bdf;
	__u64 dma_addr;
	__u64 dma_len;
	__u32 nents;
	__u32 contiguous;
};

/**
 * struct p2pgpu_import - P2PGPU_IOC_IMPORT_DMABUF / P2PGPU_IOC_IMPORT_RELEASE
 * @fd:     in (IMPORT): a dma-buf fd, e.g. another p2pgpu's EXPORT_DMABUF
 * @handle: out (IMPORT) / in (RELEASE): the import, valid for this open file
 * @size:   out (IMPORT): the dma-buf's size
 *
 * This device attaches as a dynamic importer that allows peer-to-peer and
 * handles invalidate_mappings (it unmaps; the next IMPORT_COPY maps again).
 * Nothing is mapped until the first IMPORT_COPY. Closing the file releases
 * every import made through it.
 */
struct p2pgpu_import {
	__s32 fd;
	__u32 handle;
	__u64 size;
};

/* p2pgpu_import_copy.flags */
#define P2PGPU_IMPORT_TO	_BITUL(0) /* local -> import (else import -> local) */

/**
 * struct p2pgpu_import_copy - P2PGPU_IOC_IMPORT_COPY: copy engine to/from an import
 * @handle:        in: from IMPORT_DMABUF
 * @flags:         in: P2PGPU_IMPORT_*
 * @offset:        in: byte offset in the dma-buf
 * @local:         in: bus address of the other end (own VRAM, guest RAM, a peer)
 * @len:           in: bytes, 1..P2PGPU_COPY_MAX, inside the dma-buf
 * @timeout_ms:    in: per descriptor; 0 = P2PGPU_TIMEOUT_DEFAULT_MS
 * @status:        out: status word of the last descriptor
 * @dma_addr:      out: bus address the engine used for @offset
 * @maps:          out: mappings this import has made (a remap after an
 *                 invalidation counts again)
 * @invalidations: out: invalidate_mappings calls this import has seen
 *
 * Maps the attachment under the dma-buf's reservation lock if it is not
 * mapped, and keeps the lock while the engine runs, so an invalidation or a
 * revoke waits for the copy. A revoked export fails the map: the ioctl
 * returns that error (-ENODEV from p2pgpu) and nothing is copied.
 */
struct p2pgpu_import_copy {
	__u32 handle;
	__u32 flags;
	__u64 offset;
	__u64 local;
	__u64 len;
	__u32 timeout_ms;
	__u32 status;
	__u64 dma_addr;
	__u64 maps;
	__u64 invalidations;
};

/* p2pgpu_dmabuf_invalidate.flags */
#define P2PGPU_INVALIDATE_REVOKE _BITUL(0) /* and refuse every later map */

/**
 * struct p2pgpu_dmabuf_invalidate - P2PGPU_IOC_DMABUF_INVALIDATE (exporter side)
 * @fd:    in: a dma-buf this device exported
 * @flags: in: P2PGPU_INVALIDATE_*
 *
 * Invalidates every importer's mapping of the export and waits for its
 * fences; with _REVOKE the export is revoked for good and the ioctl waits
 * (up to 10 s, else -ETIMEDOUT) until no importer holds a mapping.
 */
struct p2pgpu_dmabuf_invalidate {
	__s32 fd;
	__u32 flags;
};

/**
 * struct p2pgpu_dmabuf_stats - P2PGPU_IOC_DMABUF_STATS: what this device holds
 * @exports:      out: live dma-bufs it exported
 * @export_maps:  out: importers' mappings of those, now
 * @imports:      out: live imports it made (all open files)
 * @import_maps:  out: of those, mapped now
 */
struct p2pgpu_dmabuf_stats {
	__u32 exports;
	__u32 export_maps;
	__u32 imports;
	__u32 import_maps;
};

#define P2PGPU_IOC_GET_INFO	_IOR(P2PGPU_IOC_MAGIC, 0x00, struct p2pgpu_info)
#define P2PGPU_IOC_CHECKSUM	_IOWR(P2PGPU_IOC_MAGIC, 0x01, struct p2pgpu_checksum)
#define P2PGPU_IOC_COPY		_IOWR(P2PGPU_IOC_MAGIC, 0x02, struct p2pgpu_copy)
#define P2PGPU_IOC_COPY_FROM_USER _IOWR(P2PGPU_IOC_MAGIC, 0x03, struct p2pgpu_copy_user)
#define P2PGPU_IOC_COPY_TO_USER	_IOWR(P2PGPU_IOC_MAGIC, 0x04, struct p2pgpu_copy_user)
#define P2PGPU_IOC_EXPORT_DMABUF _IOWR(P2PGPU_IOC_MAGIC, 0x05, struct p2pgpu_export_dmabuf)
#define P2PGPU_IOC_DMABUF_SELFTEST _IOWR(P2PGPU_IOC_MAGIC, 0x06, struct p2pgpu_dmabuf_selftest)
#define P2PGPU_IOC_IMPORT_DMABUF _IOWR(P2PGPU_IOC_MAGIC, 0x07, struct p2pgpu_import)
#define P2PGPU_IOC_IMPORT_RELEASE _IOW(P2PGPU_IOC_MAGIC, 0x08, struct p2pgpu_import)
#define P2PGPU_IOC_IMPORT_COPY	_IOWR(P2PGPU_IOC_MAGIC, 0x09, struct p2pgpu_import_copy)
#define P2PGPU_IOC_DMABUF_INVALIDATE _IOW(P2PGPU_IOC_MAGIC, 0x0a, struct p2pgpu_dmabuf_invalidate)
#define P2PGPU_IOC_DMABUF_STATS	_IOR(P2PGPU_IOC_MAGIC, 0x0b, struct p2pgpu_dmabuf_stats)

#endif /* _UAPI_P2PGPU_H */
