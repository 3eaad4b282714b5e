// SPDX-License-Identifier: GPL-2.0
/*
 * p2pgpu - driver for the p2plab GPU-like test device
 *
 * The device (p2plab-gpu) has registers in BAR0, a large prefetchable
 * "VRAM" in BAR2 and its MSI-X table in BAR4. This driver:
 *  - publishes a slice of BAR2 as p2pmem (struct pages), so that
 *    /sys/bus/pci/devices/<bdf>/p2pmem/allocate can be mmapped and used as
 *    the buffer of O_DIRECT I/O on a peer NVMe device;
 *  - exports any page-aligned range of BAR2 as a page-less dma-buf through
 *    the P2PDMA provider (pcim_p2pdma_provider + dma_buf_phys_vec_to_sgt);
 *  - gives user space /dev/p2pgpuN (see p2pgpu_uapi.h) to run the device's
 *    copy engine (descriptor ring in guest RAM) and checksum engine
 *    (SHA-256 over VRAM), and to self-test a dma-buf import.
 *
 * Only one engine operation runs at a time per device (dev->lock); the
 * ring is used one descriptor at a time.
 */

#include <linux/atomic.h>
#include <linux/dma-buf.h>
#include <linux/dma-buf-mapping.h>
#include <linux/dma-mapping.h>
#include <linux/dma-resv.h>
#include <linux/fcntl.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/iopoll.h>
#include <linux/kref.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/overflow.h>
#include <linux/pci.h>
#include <linux/pci-p2pdma.h>
#include <linux/scatterlist.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/unaligned.h>
#include <linux/wait.h>
#include <linux/xarray.h>

#include "p2pgpu_regs.h"
#include "p2pgpu_uapi.h"

#define P2PGPU_VERSION_MAJOR(v)		((v) >> 16)
#define P2PGPU_INTR_CE			(P2PGPU_INTR_CE_DONE | P2PGPU_INTR_CE_ERROR)
#define P2PGPU_INTR_CK			(P2PGPU_INTR_CK_DONE | P2PGPU_INTR_CK_ERROR)
/* MSI-X vectors the driver uses (the device has more). */
#define P2PGPU_NR_VECTORS		2

#define P2PGPU_RING_ENTRIES		64
/* Extra time per MiB moved or hashed on top of the base timeout. */
#define P2PGPU_MS_PER_MIB		4

/* One copy descriptor in the ring (little-endian, 32 bytes). */
struct p2pgpu_desc {
	__le64 src;
	__le64 dst;
	__le64 len;
	__le32 flags;
	__le32 status;
};

static_assert(sizeof(struct p2pgpu_desc) == P2PGPU_DESC_SIZE);

struct p2pgpu_dev {
	struct kref ref;
	struct pci_dev *pdev;
	void __iomem *regs;
	struct miscdevice misc;
	char name[24];
	int id;

	/* Serializes engine use and dma-buf export; protects @dead. */
	struct mutex lock;
	bool dead;

	wait_queue_head_t wq;
	atomic_t ce_events;	/* INTR_CE_* seen since the last submit */
	atomic_t ck_events;	/* INTR_CK_* seen since the last start */

	struct p2pgpu_desc *ring;
	dma_addr_t ring_dma;
	u32 ce_tail;
	bool ce_broken;		/* the engine did not stop: never reuse buffers */

	void *bounce;
	dma_addr_t bounce_dma;
	size_t bounce_size;

	u32 version;
	u64 vram_size;
	resource_size_t bar2_phys;
	pci_bus_addr_t bar2_bus;
	u64 p2pmem_offset;
	u64 p2pmem_size;
	struct p2pdma_provider *provider;
	struct list_head dmabufs;	/* under p2pgpu_dmabuf_lock */
	atomic_t nr_imports;		/* live imports made by this device */
	atomic_t nr_import_maps;	/* of those, mapped */
};

/* An open /dev/p2pgpuN: the imports made through it die with it. */
struct p2pgpu_file {
	struct p2pgpu_dev *g;
	struct xarray imports;		/* handle -> struct p2pgpu_import_ctx */
};

/* This device importing someone's dma-buf (P2PGPU_IOC_IMPORT_DMABUF). */
struct p2pgpu_import_ctx {
	struct p2pgpu_dev *g;
	struct dma_buf *dmabuf;
	struct dma_buf_attachment *attach;
	struct sg_table *sgt;		/* under dmabuf->resv; NULL: unmapped */
	u64 maps;			/* under dmabuf->resv */
	u64 invalidations;		/* under dmabuf->resv */
};

/* An exported range of BAR2. */
struct p2pgpu_dmabuf {
	struct dma_buf *dmabuf;
	struct p2pgpu_dev *gdev;	/* NULL once revoked by remove */
	struct list_head node;		/* in gdev->dmabufs */
	struct p2pdma_provider *provider;
	struct phys_vec phys;
	size_t size;
	bool revoked;			/* under dmabuf->resv */
	atomic_t nr_maps;
};

static unsigned long long p2pmem_size;
module_param(p2pmem_size, ullong, 0444);
MODULE_PARM_DESC(p2pmem_size,
		 "Bytes of BAR2 to publish as p2pmem, a multiple of 2 MiB (0: the whole BAR, at most 1 GiB)");

static unsigned long long p2pmem_offset;
module_param(p2pmem_offset, ullong, 0444);
MODULE_PARM_DESC(p2pmem_offset,
		 "Offset in BAR2 of the p2pmem slice, a multiple of 2 MiB (default 0)");

static unsigned long long no_p2pmem[8];
static int no_p2pmem_count;
module_param_array(no_p2pmem, ullong, &no_p2pmem_count, 0444);
MODULE_PARM_DESC(no_p2pmem,
		 "Device Serial Numbers of devices that publish no p2pmem at all (page-less only)");

static bool inject_warn;
module_param(inject_warn, bool, 0644);
MODULE_PARM_DESC(inject_warn,
		 "Test of the lab's harness: WARN once in the next GET_INFO ioctl");

static DEFINE_IDA(p2pgpu_ida);
/* Protects every p2pgpu_dmabuf's node and gdev. Nests outside dma_resv. */
static DEFINE_MUTEX(p2pgpu_dmabuf_lock);
static DECLARE_WAIT_QUEUE_HEAD(p2pgpu_unmap_wq);

static u32 p2pgpu_rd(struct p2pgpu_dev *g, u32 reg)
{
	return readl(g->regs + reg);
}

static void p2pgpu_wr(struct p2pgpu_dev *g, u32 reg, u32 val)
{
	writel(val, g->regs + reg);
}

static void p2pgpu_release(struct kref *ref)
{
	struct p2pgpu_dev *g = container_of(ref, struct p2pgpu_dev, ref);

	pci_dev_put(g->pdev);
	kfree(g);
}

/* MSI-X vectors are not shared: every call is ours, even if already acked. */
static irqreturn_t p2pgpu_irq(struct p2pgpu_dev *g, u32 mask, atomic_t *ev)
{
	u32 st = p2pgpu_rd(g, P2PGPU_REG_INTR_STATUS) & mask;

	if (st) {
		p2pgpu_wr(g, P2PGPU_REG_INTR_STATUS, st);
		atomic_or(st, ev);
		wake_up(&g->wq);
	}
	return IRQ_HANDLED;
}

static irqreturn_t p2pgpu_ce_irq(int irq, void *data)
{
	struct p2pgpu_dev *g = data;

	return p2pgpu_irq(g, P2PGPU_INTR_CE, &g->ce_events);
}

static irqreturn_t p2pgpu_ck_irq(int irq, void *data)
{
	struct p2pgpu_dev *g = data;

	return p2pgpu_irq(g, P2PGPU_INTR_CK, &g->ck_events);
}

static unsigned long p2pgpu_timeout(u32 timeout_ms, u64 len)
{
	u64 ms = timeout_ms;

	if (!ms)
		ms = P2PGPU_TIMEOUT_DEFAULT_MS +
		     (len >> 20) * P2PGPU_MS_PER_MIB;
	return msecs_to_jiffies(min_t(u64, ms, UINT_MAX));
}

/*
 * Disable the copy engine and wait until it holds no descriptor (it may be
 * in the middle of a chunk): only then may the ring and the bounce buffer be
 * reused or freed.
 */
static int p2pgpu_ce_stop(struct p2pgpu_dev *g)
{
	u32 st;
	int ret;

	p2pgpu_wr(g, P2PGPU_REG_CE_CTRL, 0);
	ret = readl_poll_timeout(g->regs + P2PGPU_REG_CE_STATUS, st,
				 !(st & P2PGPU_CE_STATUS_ACTIVE),
				 USEC_PER_MSEC, 10 * USEC_PER_SEC);
	if (ret) {
		pci_err(g->pdev, "copy engine does not stop (status %#x)\n", st);
		g->ce_broken = true;
	}
	return ret;
}

/* (Re)start the copy engine on the ring: head = tail = 0. */
static int p2pgpu_ce_start(struct p2pgpu_dev *g)
{
	if (p2pgpu_ce_stop(g))
		return -EIO;
	p2pgpu_wr(g, P2PGPU_REG_CE_RING_BASE_LO, lower_32_bits(g->ring_dma));
	p2pgpu_wr(g, P2PGPU_REG_CE_RING_BASE_HI, upper_32_bits(g->ring_dma));
	p2pgpu_wr(g, P2PGPU_REG_CE_RING_SIZE, P2PGPU_RING_ENTRIES);
	p2pgpu_wr(g, P2PGPU_REG_CE_CTRL, P2PGPU_CE_CTRL_ENABLE);
	g->ce_tail = 0;
	if (p2pgpu_rd(g, P2PGPU_REG_CE_STATUS) & P2PGPU_CE_STATUS_HALTED) {
		pci_err(g->pdev, "copy engine refused the ring\n");
		return -EIO;
	}
	return 0;
}

static bool p2pgpu_ce_settled(struct p2pgpu_dev *g, struct p2pgpu_desc *d)
{
	return (le32_to_cpu(READ_ONCE(d->status)) & P2PGPU_DESC_STATUS_DONE) ||
	       (atomic_read(&g->ce_events) & P2PGPU_INTR_CE_ERROR);
}

/*
 * Run one descriptor and wait for it. Returns 0, -EIO (the descriptor failed:
 * *status has the code, or the ring halted) or -ETIMEDOUT.
 */
static int p2pgpu_ce_copy(struct p2pgpu_dev *g, u64 src, u64 dst, u64 len,
			  u32 timeout_ms, u32 *status)
{
	struct p2pgpu_desc *d = &g->ring[g->ce_tail];
	long left;
	u32 st;

	lockdep_assert_held(&g->lock);
	if (g->ce_broken)
		return -EIO;

	d->src = cpu_to_le64(src);
	d->dst = cpu_to_le64(dst);
	d->len = cpu_to_le64(len);
	d->flags = cpu_to_le32(P2PGPU_DESC_FLAG_INTERRUPT);
	WRITE_ONCE(d->status, 0);
	atomic_set(&g->ce_events, 0);
	g->ce_tail = (g->ce_tail + 1) % P2PGPU_RING_ENTRIES;
	/* writel() orders the descriptor in coherent memory before the doorbell. */
	p2pgpu_wr(g, P2PGPU_REG_CE_TAIL, g->ce_tail);

	left = wait_event_timeout(g->wq, p2pgpu_ce_settled(g, d),
				  p2pgpu_timeout(timeout_ms, len));
	st = le32_to_cpu(READ_ONCE(d->status));
	*status = st;
	if (!(st & P2PGPU_DESC_STATUS_DONE)) {
		pci_err(g->pdev, "copy %#llx -> %#llx (%llu bytes) %s, engine status %#x\n",
			src, dst, len, left ? "halted the ring" : "timed out",
			p2pgpu_rd(g, P2PGPU_REG_CE_STATUS));
		/* Disabling abandons the descriptor; the ring restarts at 0. */
		p2pgpu_ce_start(g);
		return left ? -EIO : -ETIMEDOUT;
	}
	/* The status word is written after the data: read data after it. */
	dma_rmb();
	return (st & P2PGPU_DESC_STATUS_ERROR) ? -EIO : 0;
}

static int p2pgpu_check_copy(u64 addr, u64 len, u32 timeout_ms)
{
	u64 end;

	if (!len || len > P2PGPU_COPY_MAX ||
	    check_add_overflow(addr, len, &end) ||
	    timeout_ms > P2PGPU_TIMEOUT_MAX_MS)
		return -EINVAL;
	return 0;
}

static int p2pgpu_lock_live(struct p2pgpu_dev *g)
{
	int ret = mutex_lock_interruptible(&g->lock);

	if (ret)
		return ret;
	if (g->dead) {
		mutex_unlock(&g->lock);
		return -ENODEV;
	}
	return 0;
}

static long p2pgpu_ioctl_info(struct p2pgpu_dev *g, void __user *uarg)
{
	struct p2pgpu_info info = {
		.vram_size = g->vram_size,
		.bar2_bus_addr = g->bar2_bus,
		.bar2_phys_addr = g->bar2_phys,
		.p2pmem_offset = g->p2pmem_offset,
		.p2pmem_size = g->p2pmem_size,
		.version = g->version,
		.flags = g->p2pmem_size ? P2PGPU_INFO_P2PMEM : 0,
		.copy_bounce_size = g->bounce_size,
	};

	/* The lab fails a case on any kernel report: this proves it does. */
	if (cmpxchg(&inject_warn, true, false))
		WARN(1, "p2pgpu: injected warning (inject_warn=1)\n");
	if (copy_to_user(uarg, &info, sizeof(info)))
		return -EFAULT;
	return 0;
}

static long p2pgpu_ioctl_checksum(struct p2pgpu_dev *g, void __user *uarg)
{
	struct p2pgpu_checksum ck;
	long left;
	long ret;
	u32 st;
	int i;

	if (copy_from_user(&ck, uarg, sizeof(ck)))
		return -EFAULT;
	if (ck.len > g->vram_size || ck.offset > g->vram_size - ck.len)
		return -EINVAL;

	ret = p2pgpu_lock_live(g);
	if (ret)
		return ret;

	if (p2pgpu_rd(g, P2PGPU_REG_CK_STATUS) & P2PGPU_CK_STATUS_BUSY) {
		/* A run we gave up on earlier is still going. */
		ret = -EBUSY;
		goto out;
	}
	atomic_set(&g->ck_events, 0);
	p2pgpu_wr(g, P2PGPU_REG_CK_OFFSET_LO, lower_32_bits(ck.offset));
	p2pgpu_wr(g, P2PGPU_REG_CK_OFFSET_HI, upper_32_bits(ck.offset));
	p2pgpu_wr(g, P2PGPU_REG_CK_LEN_LO, lower_32_bits(ck.len));
	p2pgpu_wr(g, P2PGPU_REG_CK_LEN_HI, upper_32_bits(ck.len));
	p2pgpu_wr(g, P2PGPU_REG_CK_CTRL, P2PGPU_CK_CTRL_START);

	left = wait_event_killable_timeout(g->wq,
					   atomic_read(&g->ck_events) & P2PGPU_INTR_CK,
					   p2pgpu_timeout(0, ck.len));
	if (left < 0) {
		ret = left;
		goto out;
	}
	st = p2pgpu_rd(g, P2PGPU_REG_CK_STATUS);
	ck.status = st;
	ck.algo = p2pgpu_rd(g, P2PGPU_REG_CK_ALGO);
	if (st & P2PGPU_CK_STATUS_BUSY) {
		ret = -ETIMEDOUT;
		goto out;
	}
	if (!(st & P2PGPU_CK_STATUS_DONE)) {
		ret = -EIO;
		goto out;
	}
	for (i = 0; i < P2PGPU_DIGEST_SIZE / 4; i++)
		put_unaligned_le32(p2pgpu_rd(g, P2PGPU_REG_CK_DIGEST + 4 * i),
				   &ck.digest[4 * i]);
	mutex_unlock(&g->lock);
	if (copy_to_user(uarg, &ck, sizeof(ck)))
		return -EFAULT;
	return 0;
out:
	mutex_unlock(&g->lock);
	return ret;
}

static long p2pgpu_ioctl_copy(struct p2pgpu_dev *g, void __user *uarg)
{
	struct p2pgpu_copy cp;
	u64 end;
	long ret;

	if (copy_from_user(&cp, uarg, sizeof(cp)))
		return -EFAULT;
	ret = p2pgpu_check_copy(cp.src, cp.len, cp.timeout_ms);
	if (ret || check_add_overflow(cp.dst, cp.len, &end))
		return -EINVAL;

	ret = p2pgpu_lock_live(g);
	if (ret)
		return ret;
	cp.status = 0;
	ret = p2pgpu_ce_copy(g, cp.src, cp.dst, cp.len, cp.timeout_ms,
			     &cp.status);
	mutex_unlock(&g->lock);

	if (copy_to_user(uarg, &cp, sizeof(cp)))
		return -EFAULT;
	return ret;
}

/* User memory <-> bounce buffer in guest RAM <-> (copy engine) dev_addr. */
static long p2pgpu_ioctl_copy_user(struct p2pgpu_dev *g, void __user *uarg,
				   bool from_user)
{
	struct p2pgpu_copy_user cu;
	u64 done, n;
	long ret;

	if (copy_from_user(&cu, uarg, sizeof(cu)))
		return -EFAULT;
	ret = p2pgpu_check_copy(cu.dev_addr, cu.len, cu.timeout_ms);
	if (ret)
		return ret;

	ret = p2pgpu_lock_live(g);
	if (ret)
		return ret;
	cu.status = 0;
	for (done = 0; done < cu.len; done += n) {
		void __user *ubuf = u64_to_user_ptr(cu.user_addr + done);

		n = min_t(u64, cu.len - done, g->bounce_size);
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		if (from_user) {
			if (copy_from_user(g->bounce, ubuf, n)) {
				ret = -EFAULT;
				break;
			}
			ret = p2pgpu_ce_copy(g, g->bounce_dma, cu.dev_addr + done,
					     n, cu.timeout_ms, &cu.status);
			if (ret)
				break;
		} else {
			ret = p2pgpu_ce_copy(g, cu.dev_addr + done, g->bounce_dma,
					     n, cu.timeout_ms, &cu.status);
			if (ret)
				break;
			if (copy_to_user(ubuf, g->bounce, n)) {
				ret = -EFAULT;
				break;
			}
		}
		cond_resched();
	}
	mutex_unlock(&g->lock);

	if (copy_to_user(uarg, &cu, sizeof(cu)))
		return -EFAULT;
	return ret;
}

/* dma-buf exporter: a page-less range of BAR2. */

static int p2pgpu_dmabuf_attach(struct dma_buf *dmabuf,
				struct dma_buf_attachment *attach)
{
	struct p2pgpu_dmabuf *priv = dmabuf->priv;

	/* There are no struct pages, and the BAR goes away on unbind. */
	if (!attach->peer2peer || !dma_buf_attach_revocable(attach))
		return -EOPNOTSUPP;
	if (READ_ONCE(priv->revoked))
		return -ENODEV;
	return 0;
}

static struct sg_table *p2pgpu_dmabuf_map(struct dma_buf_attachment *attach,
					  enum dma_data_direction dir)
{
	struct p2pgpu_dmabuf *priv = attach->dmabuf->priv;
	struct sg_table *sgt;

	dma_resv_assert_held(attach->dmabuf->resv);
	if (priv->revoked)
		return ERR_PTR(-ENODEV);

	sgt = dma_buf_phys_vec_to_sgt(attach, priv->provider, &priv->phys, 1,
				      priv->size, dir);
	if (!IS_ERR(sgt))
		atomic_inc(&priv->nr_maps);
	return sgt;
}

static void p2pgpu_dmabuf_unmap(struct dma_buf_attachment *attach,
				struct sg_table *sgt,
				enum dma_data_direction dir)
{
	struct p2pgpu_dmabuf *priv = attach->dmabuf->priv;

	dma_resv_assert_held(attach->dmabuf->resv);
	dma_buf_free_sgt(attach, sgt, dir);
	if (atomic_dec_and_test(&priv->nr_maps))
		wake_up(&p2pgpu_unmap_wq);
}

static void p2pgpu_dmabuf_release(struct dma_buf *dmabuf)
{
	struct p2pgpu_dmabuf *priv = dmabuf->priv;

	mutex_lock(&p2pgpu_dmabuf_lock);
	list_del_init(&priv->node);
	mutex_unlock(&p2pgpu_dmabuf_lock);
	kfree(priv);
}

static const struct dma_buf_ops p2pgpu_dmabuf_ops = {
	.attach = p2pgpu_dmabuf_attach,
	.map_dma_buf = p2pgpu_dmabuf_map,
	.unmap_dma_buf = p2pgpu_dmabuf_unmap,
	.release = p2pgpu_dmabuf_release,
};

static long p2pgpu_ioctl_export(struct p2pgpu_dev *g, void __user *uarg)
{
	DEFINE_DMA_BUF_EXPORT_INFO(exp_info);
	struct p2pgpu_export_dmabuf ex;
	struct p2pgpu_dmabuf *priv;
	struct dma_buf *dmabuf;
	long ret;
	int fd;

	if (copy_from_user(&ex, uarg, sizeof(ex)))
		return -EFAULT;
	if (ex.flags || !ex.len || !PAGE_ALIGNED(ex.offset) ||
	    !PAGE_ALIGNED(ex.len) || ex.len > g->vram_size ||
	    ex.offset > g->vram_size - ex.len)
		return -EINVAL;
	if (!g->provider)
		return -EOPNOTSUPP;

	priv = kzalloc_obj(*priv);
	if (!priv)
		return -ENOMEM;
	INIT_LIST_HEAD(&priv->node);
	atomic_set(&priv->nr_maps, 0);
	priv->provider = g->provider;
	priv->phys.paddr = g->bar2_phys + ex.offset;
	priv->phys.len = ex.len;
	priv->size = ex.len;

	ret = p2pgpu_lock_live(g);
	if (ret)
		goto err_free;

	exp_info.ops = &p2pgpu_dmabuf_ops;
	exp_info.size = priv->size;
	exp_info.flags = O_RDWR | O_CLOEXEC;
	exp_info.priv = priv;
	dmabuf = dma_buf_export(&exp_info);
	if (IS_ERR(dmabuf)) {
		ret = PTR_ERR(dmabuf);
		mutex_unlock(&g->lock);
		goto err_free;
	}
	/* From here on dma_buf_put() frees priv through release(). */
	priv->dmabuf = dmabuf;
	mutex_lock(&p2pgpu_dmabuf_lock);
	priv->gdev = g;
	list_add_tail(&priv->node, &g->dmabufs);
	mutex_unlock(&p2pgpu_dmabuf_lock);
	mutex_unlock(&g->lock);

	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0) {
		dma_buf_put(dmabuf);
		return fd;
	}
	ex.fd = fd;
	if (copy_to_user(uarg, &ex, sizeof(ex))) {
		put_unused_fd(fd);
		dma_buf_put(dmabuf);
		return -EFAULT;
	}
	dma_buf_fd_install(dmabuf, fd);
	return 0;

err_free:
	kfree(priv);
	return ret;
}

/* Unbind: no importer may keep using the BAR. Called with g->dead set. */
static void p2pgpu_revoke_dmabufs(struct p2pgpu_dev *g)
{
	struct p2pgpu_dmabuf *priv, *tmp;

	mutex_lock(&p2pgpu_dmabuf_lock);
	list_for_each_entry_safe(priv, tmp, &g->dmabufs, node) {
		struct dma_buf *dmabuf = priv->dmabuf;
		bool live = get_file_active(&dmabuf->file);

		list_del_init(&priv->node);
		priv->gdev = NULL;
		if (!live)	/* release() is waiting for our lock */
			continue;
		dma_resv_lock(dmabuf->resv, NULL);
		priv->revoked = true;
		dma_buf_invalidate_mappings(dmabuf);
		dma_resv_wait_timeout(dmabuf->resv, DMA_RESV_USAGE_BOOKKEEP,
				      false, MAX_SCHEDULE_TIMEOUT);
		dma_resv_unlock(dmabuf->resv);
		if (!wait_event_timeout(p2pgpu_unmap_wq,
					!atomic_read(&priv->nr_maps), 10 * HZ))
			pci_warn(g->pdev, "a dma-buf importer kept its mapping after revoke\n");
		fput(dmabuf->file);
	}
	mutex_unlock(&p2pgpu_dmabuf_lock);
}

/* In-module importer used by DMABUF_SELFTEST: maps and unmaps synchronously. */
static void p2pgpu_selftest_invalidate(struct dma_buf_attachment *attach)
{
}

static const struct dma_buf_attach_ops p2pgpu_selftest_importer = {
	.allow_peer2peer = true,
	.invalidate_mappings = p2pgpu_selftest_invalidate,
};

static int p2pgpu_selftest_map(struct dma_buf *dmabuf, struct device *dev,
			       struct p2pgpu_dmabuf_selftest *st)
{
	struct dma_buf_attachment *attach;
	struct scatterlist *sg;
	struct sg_table *sgt;
	dma_addr_t next = 0;
	int ret, i;

	attach = dma_buf_dynamic_attach(dmabuf, dev, &p2pgpu_selftest_importer,
					NULL);
	if (IS_ERR(attach))
		return PTR_ERR(attach);

	ret = dma_resv_lock_interruptible(dmabuf->resv, NULL);
	if (ret)
		goto detach;
	sgt = dma_buf_map_attachment(attach, DMA_BIDIRECTIONAL);
	if (IS_ERR(sgt)) {
		ret = PTR_ERR(sgt);
		goto unlock;
	}
	st->contiguous = 1;
	for_each_sgtable_dma_sg(sgt, sg, i) {
		if (i == 0)
			st->dma_addr = sg_dma_address(sg);
		else if (sg_dma_address(sg) != next)
			st->contiguous = 0;
		next = sg_dma_address(sg) + sg_dma_len(sg);
		st->dma_len += sg_dma_len(sg);
	}
	st->nents = sgt->nents;
	dma_buf_unmap_attachment(attach, sgt, DMA_BIDIRECTIONAL);
unlock:
	dma_resv_unlock(dmabuf->resv);
detach:
	dma_buf_detach(dmabuf, attach);
	return ret;
}

static long p2pgpu_ioctl_selftest(struct p2pgpu_dev *g, void __user *uarg)
{
	struct p2pgpu_dmabuf_selftest st;
	struct pci_dev *importer;
	struct dma_buf *dmabuf;
	long ret;

	if (copy_from_user(&st, uarg, sizeof(st)))
		return -EFAULT;
	if (st.flags & ~P2PGPU_SELFTEST_PEER)
		return -EINVAL;

	if (st.flags & P2PGPU_SELFTEST_PEER) {
		if (st.peer_bdf > 0xffff)
			return -EINVAL;
		importer = pci_get_domain_bus_and_slot(st.peer_domain,
						       st.peer_bdf >> 8,
						       st.peer_bdf & 0xff);
		if (!importer)
			return -ENODEV;
	} else {
		importer = pci_dev_get(g->pdev);
	}

	dmabuf = dma_buf_get(st.fd);
	if (IS_ERR(dmabuf)) {
		ret = PTR_ERR(dmabuf);
		goto put_dev;
	}
	st.dma_addr = 0;
	st.dma_len = 0;
	st.nents = 0;
	st.contiguous = 0;
	ret = p2pgpu_selftest_map(dmabuf, &importer->dev, &st);
	dma_buf_put(dmabuf);
	if (!ret && copy_to_user(uarg, &st, sizeof(st)))
		ret = -EFAULT;
put_dev:
	pci_dev_put(importer);
	return ret;
}

/* Exporter side: invalidate (or revoke) one of our exports on request. */
static long p2pgpu_ioctl_invalidate(struct p2pgpu_dev *g, void __user *uarg)
{
	struct p2pgpu_dmabuf_invalidate inv;
	struct p2pgpu_dmabuf *priv;
	struct dma_buf *dmabuf;
	long ret = 0;

	if (copy_from_user(&inv, uarg, sizeof(inv)))
		return -EFAULT;
	if (inv.flags & ~P2PGPU_INVALIDATE_REVOKE)
		return -EINVAL;
	dmabuf = dma_buf_get(inv.fd);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	priv = dmabuf->priv;
	mutex_lock(&p2pgpu_dmabuf_lock);
	if (dmabuf->ops != &p2pgpu_dmabuf_ops || priv->gdev != g) {
		mutex_unlock(&p2pgpu_dmabuf_lock);
		dma_buf_put(dmabuf);
		return -EINVAL;	/* not an export of this device */
	}
	dma_resv_lock(dmabuf->resv, NULL);
	if (inv.flags & P2PGPU_INVALIDATE_REVOKE)
		priv->revoked = true;
	dma_buf_invalidate_mappings(dmabuf);
	dma_resv_wait_timeout(dmabuf->resv, DMA_RESV_USAGE_BOOKKEEP, false,
			      MAX_SCHEDULE_TIMEOUT);
	dma_resv_unlock(dmabuf->resv);
	mutex_unlock(&p2pgpu_dmabuf_lock);
	if ((inv.flags & P2PGPU_INVALIDATE_REVOKE) &&
	    !wait_event_timeout(p2pgpu_unmap_wq, !atomic_read(&priv->nr_maps),
				10 * HZ))
		ret = -ETIMEDOUT;
	dma_buf_put(dmabuf);
	return ret;
}

static long p2pgpu_ioctl_stats(struct p2pgpu_dev *g, void __user *uarg)
{
	struct p2pgpu_dmabuf_stats st = {
		.imports = atomic_read(&g->nr_imports),
		.import_maps = atomic_read(&g->nr_import_maps),
	};
	struct p2pgpu_dmabuf *priv;

	mutex_lock(&p2pgpu_dmabuf_lock);
	list_for_each_entry(priv, &g->dmabufs, node) {
		st.exports++;
		st.export_maps += atomic_read(&priv->nr_maps);
	}
	mutex_unlock(&p2pgpu_dmabuf_lock);
	if (copy_to_user(uarg, &st, sizeof(st)))
		return -EFAULT;
	return 0;
}

/* Importer side. */

/* Called by the exporter with the reservation lock held: drop our mapping. */
static void p2pgpu_import_invalidate(struct dma_buf_attachment *attach)
{
	struct p2pgpu_import_ctx *imp = attach->importer_priv;

	dma_resv_assert_held(attach->dmabuf->resv);
	imp->invalidations++;
	if (imp->sgt) {
		dma_buf_unmap_attachment(attach, imp->sgt, DMA_BIDIRECTIONAL);
		imp->sgt = NULL;
		atomic_dec(&imp->g->nr_import_maps);
	}
}

static const struct dma_buf_attach_ops p2pgpu_importer = {
	.allow_peer2peer = true,
	.invalidate_mappings = p2pgpu_import_invalidate,
};

static void p2pgpu_import_free(struct p2pgpu_import_ctx *imp)
{
	struct dma_buf *dmabuf = imp->dmabuf;

	dma_resv_lock(dmabuf->resv, NULL);
	if (imp->sgt) {
		dma_buf_unmap_attachment(imp->attach, imp->sgt, DMA_BIDIRECTIONAL);
		imp->sgt = NULL;
		atomic_dec(&imp->g->nr_import_maps);
	}
	dma_resv_unlock(dmabuf->resv);
	dma_buf_detach(dmabuf, imp->attach);
	dma_buf_put(dmabuf);
	atomic_dec(&imp->g->nr_imports);
	kref_put(&imp->g->ref, p2pgpu_release);
	kfree(imp);
}

static long p2pgpu_ioctl_import(struct p2pgpu_file *pf, void __user *uarg)
{
	struct p2pgpu_dev *g = pf->g;
	struct p2pgpu_import im;
	struct p2pgpu_import_ctx *imp;
	u32 handle;
	long ret;

	if (copy_from_user(&im, uarg, sizeof(im)))
		return -EFAULT;
	imp = kzalloc_obj(*imp);
	if (!imp)
		return -ENOMEM;
	imp->dmabuf = dma_buf_get(im.fd);
	if (IS_ERR(imp->dmabuf)) {
		ret = PTR_ERR(imp->dmabuf);
		kfree(imp);
		return ret;
	}
	imp->g = g;
	kref_get(&g->ref);
	atomic_inc(&g->nr_imports);
	imp->attach = dma_buf_dynamic_attach(imp->dmabuf, &g->pdev->dev,
					     &p2pgpu_importer, imp);
	if (IS_ERR(imp->attach)) {
		ret = PTR_ERR(imp->attach);
		dma_buf_put(imp->dmabuf);
		atomic_dec(&g->nr_imports);
		kref_put(&g->ref, p2pgpu_release);
		kfree(imp);
		return ret;
	}
	ret = xa_alloc(&pf->imports, &handle, imp, xa_limit_31b, GFP_KERNEL);
	if (ret) {
		p2pgpu_import_free(imp);
		return ret;
	}
	im.handle = handle;
	im.size = imp->dmabuf->size;
	if (copy_to_user(uarg, &im, sizeof(im))) {
		xa_erase(&pf->imports, handle);
		p2pgpu_import_free(imp);
		return -EFAULT;
	}
	return 0;
}

static long p2pgpu_ioctl_import_release(struct p2pgpu_file *pf,
					void __user *uarg)
{
	struct p2pgpu_import im;
	struct p2pgpu_import_ctx *imp;

	if (copy_from_user(&im, uarg, sizeof(im)))
		return -EFAULT;
	imp = xa_erase(&pf->imports, im.handle);
	if (!imp)
		return -ENOENT;
	p2pgpu_import_free(imp);
	return 0;
}

/*
 * Copy between @ic->local and the import, one descriptor per DMA segment
 * piece. Lock order: the importer's g->lock, then the dma-buf's resv.
 */
static long p2pgpu_ioctl_import_copy(struct p2pgpu_file *pf, void __user *uarg)
{
	struct p2pgpu_dev *g = pf->g;
	struct p2pgpu_import_copy ic;
	struct p2pgpu_import_ctx *imp;
	struct scatterlist *sg;
	u64 end, seg_start = 0, done = 0;
	struct sg_table *sgt;
	long ret;
	int i;

	if (copy_from_user(&ic, uarg, sizeof(ic)))
		return -EFAULT;
	if (ic.flags & ~P2PGPU_IMPORT_TO)
		return -EINVAL;
	ret = p2pgpu_check_copy(ic.local, ic.len, ic.timeout_ms);
	if (ret)
		return ret;
	ret = p2pgpu_lock_live(g);
	if (ret)
		return ret;
	/* Imports are only erased by RELEASE and close, which this ioctl excludes. */
	imp = xa_load(&pf->imports, ic.handle);
	if (!imp) {
		ret = -ENOENT;
		goto unlock_dev;
	}
	if (check_add_overflow(ic.offset, ic.len, &end) ||
	    end > imp->dmabuf->size) {
		ret = -EINVAL;
		goto unlock_dev;
	}
	ret = dma_resv_lock_interruptible(imp->dmabuf->resv, NULL);
	if (ret)
		goto unlock_dev;
	if (!imp->sgt) {
		sgt = dma_buf_map_attachment(imp->attach, DMA_BIDIRECTIONAL);
		if (IS_ERR(sgt)) {
			ret = PTR_ERR(sgt);
			goto unlock_resv;
		}
		imp->sgt = sgt;
		imp->maps++;
		atomic_inc(&g->nr_import_maps);
	}
	ic.dma_addr = 0;
	for_each_sgtable_dma_sg(imp->sgt, sg, i) {
		u64 seg_len = sg_dma_len(sg), from, n, bus;

		if (done == ic.len)
			break;
		if (ic.offset + done >= seg_start + seg_len) {
			seg_start += seg_len;
			continue;
		}
		from = ic.offset + done - seg_start;
		n = min(seg_len - from, ic.len - done);
		bus = sg_dma_address(sg) + from;
		if (!done)
			ic.dma_addr = bus;
		if (ic.flags & P2PGPU_IMPORT_TO)
			ret = p2pgpu_ce_copy(g, ic.local + done, bus, n,
					     ic.timeout_ms, &ic.status);
		else
			ret = p2pgpu_ce_copy(g, bus, ic.local + done, n,
					     ic.timeout_ms, &ic.status);
		if (ret)
			goto unlock_resv;
		done += n;
		seg_start += seg_len;
	}
	if (done != ic.len)
		ret = -EIO;	/* the mapping was shorter than the dma-buf */
unlock_resv:
	ic.maps = imp->maps;
	ic.invalidations = imp->invalidations;
	dma_resv_unlock(imp->dmabuf->resv);
unlock_dev:
	mutex_unlock(&g->lock);
	if (copy_to_user(uarg, &ic, sizeof(ic)) && !ret)
		ret = -EFAULT;
	return ret;
}

static long p2pgpu_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct p2pgpu_file *pf = file->private_data;
	struct p2pgpu_dev *g = pf->g;
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case P2PGPU_IOC_GET_INFO:
		return p2pgpu_ioctl_info(g, uarg);
	case P2PGPU_IOC_CHECKSUM:
		return p2pgpu_ioctl_checksum(g, uarg);
	case P2PGPU_IOC_COPY:
		return p2pgpu_ioctl_copy(g, uarg);
	case P2PGPU_IOC_COPY_FROM_USER:
		return p2pgpu_ioctl_copy_user(g, uarg, true);
	case P2PGPU_IOC_COPY_TO_USER:
		return p2pgpu_ioctl_copy_user(g, uarg, false);
	case P2PGPU_IOC_EXPORT_DMABUF:
		return p2pgpu_ioctl_export(g, uarg);
	case P2PGPU_IOC_DMABUF_SELFTEST:
		return p2pgpu_ioctl_selftest(g, uarg);
	case P2PGPU_IOC_IMPORT_DMABUF:
		return p2pgpu_ioctl_import(pf, uarg);
	case P2PGPU_IOC_IMPORT_RELEASE:
		return p2pgpu_ioctl_import_release(pf, uarg);
	case P2PGPU_IOC_IMPORT_COPY:
		return p2pgpu_ioctl_import_copy(pf, uarg);
	case P2PGPU_IOC_DMABUF_INVALIDATE:
		return p2pgpu_ioctl_invalidate(g, uarg);
	case P2PGPU_IOC_DMABUF_STATS:
		return p2pgpu_ioctl_stats(g, uarg);
	default:
		return -ENOTTY;
	}
}

static int p2pgpu_open(struct inode *inode, struct file *file)
{
	/* misc_open() set private_data; misc_deregister() waits for us. */
	struct p2pgpu_dev *g = container_of(file->private_data,
					    struct p2pgpu_dev, misc);
	struct p2pgpu_file *pf = kzalloc_obj(*pf);

	if (!pf)
		return -ENOMEM;
	kref_get(&g->ref);
	pf->g = g;
	xa_init_flags(&pf->imports, XA_FLAGS_ALLOC);
	file->private_data = pf;
	return nonseekable_open(inode, file);
}

static int p2pgpu_file_release(struct inode *inode, struct file *file)
{
	struct p2pgpu_file *pf = file->private_data;
	struct p2pgpu_import_ctx *imp;
	unsigned long handle;

	xa_for_each(&pf->imports, handle, imp)
		p2pgpu_import_free(imp);
	xa_destroy(&pf->imports);
	kref_put(&pf->g->ref, p2pgpu_release);
	kfree(pf);
	return 0;
}

static const struct file_operations p2pgpu_fops = {
	.owner = THIS_MODULE,
	.open = p2pgpu_open,
	.release = p2pgpu_file_release,
	.unlocked_ioctl = p2pgpu_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

/* Publish the configured slice of BAR2 as p2pmem; failure is not fatal. */
static void p2pgpu_publish_p2pmem(struct p2pgpu_dev *g)
{
	u64 dsn = pci_get_dsn(g->pdev);
	u64 off = p2pmem_offset;
	u64 size = p2pmem_size;
	int ret, i;

	for (i = 0; i < no_p2pmem_count; i++) {
		if (dsn && no_p2pmem[i] == dsn) {
			pci_info(g->pdev, "no p2pmem published (no_p2pmem): page-less only\n");
			return;
		}
	}
	if (off >= g->vram_size) {
		pci_warn(g->pdev, "p2pmem_offset %#llx is outside BAR2\n", off);
		return;
	}
	if (!size)
		size = min_t(u64, g->vram_size - off, SZ_1G);
	if (size > g->vram_size - off || !IS_ALIGNED(off, SZ_2M) ||
	    !IS_ALIGNED(size, SZ_2M)) {
		pci_warn(g->pdev, "bad p2pmem slice %#llx+%#llx (2 MiB aligned, inside BAR2)\n",
			 off, size);
		return;
	}
	ret = pci_p2pdma_add_resource(g->pdev, 2, size, off);
	if (ret) {
		pci_warn(g->pdev, "cannot add p2pmem: %d\n", ret);
		return;
	}
	pci_p2pmem_publish(g->pdev, true);
	g->p2pmem_offset = off;
	g->p2pmem_size = size;
}

static int p2pgpu_alloc_dma(struct p2pgpu_dev *g)
{
	struct device *dev = &g->pdev->dev;
	size_t size;

	g->ring = dmam_alloc_coherent(dev, P2PGPU_RING_ENTRIES * sizeof(*g->ring),
				      &g->ring_dma, GFP_KERNEL);
	if (!g->ring)
		return -ENOMEM;

	for (size = SZ_4M; size >= SZ_64K; size /= 4) {
		g->bounce = dmam_alloc_coherent(dev, size, &g->bounce_dma,
						GFP_KERNEL | __GFP_NOWARN);
		if (g->bounce) {
			g->bounce_size = size;
			return 0;
		}
	}
	return -ENOMEM;
}

static int p2pgpu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct p2pgpu_dev *g;
	u64 vram_reg;
	int ret;

	g = kzalloc_obj(*g);
	if (!g)
		return -ENOMEM;
	kref_init(&g->ref);
	mutex_init(&g->lock);
	init_waitqueue_head(&g->wq);
	INIT_LIST_HEAD(&g->dmabufs);
	atomic_set(&g->nr_imports, 0);
	atomic_set(&g->nr_import_maps, 0);
	g->pdev = pci_dev_get(pdev);
	g->id = -1;

	ret = pcim_enable_device(pdev);
	if (ret)
		goto err_put;
	g->regs = pcim_iomap_region(pdev, 0, KBUILD_MODNAME);
	if (IS_ERR(g->regs)) {
		ret = PTR_ERR(g->regs);
		goto err_put;
	}
	if (!(pci_resource_flags(pdev, 2) & IORESOURCE_MEM) ||
	    !pci_resource_len(pdev, 2)) {
		pci_err(pdev, "BAR2 (VRAM) is not assigned\n");
		ret = -ENODEV;
		goto err_put;
	}
	ret = pcim_request_region(pdev, 2, KBUILD_MODNAME);
	if (ret)
		goto err_put;

	if (p2pgpu_rd(g, P2PGPU_REG_ID) != P2PGPU_ID_VALUE) {
		pci_err(pdev, "unexpected ID register %#x\n",
			p2pgpu_rd(g, P2PGPU_REG_ID));
		ret = -ENODEV;
		goto err_put;
	}
	g->version = p2pgpu_rd(g, P2PGPU_REG_VERSION);
	if (P2PGPU_VERSION_MAJOR(g->version) != 1) {
		pci_err(pdev, "unsupported register version %#x\n", g->version);
		ret = -ENODEV;
		goto err_put;
	}
	g->vram_size = pci_resource_len(pdev, 2);
	g->bar2_phys = pci_resource_start(pdev, 2);
	g->bar2_bus = pci_bus_address(pdev, 2);
	vram_reg = p2pgpu_rd(g, P2PGPU_REG_VRAM_SIZE_LO) |
		   (u64)p2pgpu_rd(g, P2PGPU_REG_VRAM_SIZE_HI) << 32;
	if (vram_reg != g->vram_size)
		pci_warn(pdev, "BAR2 is %#llx bytes, VRAM_SIZE says %#llx\n",
			 g->vram_size, vram_reg);

	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret)
		goto err_put;
	pci_set_master(pdev);
	ret = p2pgpu_alloc_dma(g);
	if (ret)
		goto err_put;

	ret = ida_alloc(&p2pgpu_ida, GFP_KERNEL);
	if (ret < 0)
		goto err_put;
	g->id = ret;
	snprintf(g->name, sizeof(g->name), "p2pgpu%d", g->id);

	ret = pci_alloc_irq_vectors(pdev, P2PGPU_NR_VECTORS, P2PGPU_NR_VECTORS,
				    PCI_IRQ_MSIX);
	if (ret < 0) {
		pci_err(pdev, "cannot get %d MSI-X vectors: %d\n",
			P2PGPU_NR_VECTORS, ret);
		goto err_ida;
	}
	ret = request_irq(pci_irq_vector(pdev, P2PGPU_VECTOR_CE), p2pgpu_ce_irq,
			  0, g->name, g);
	if (ret)
		goto err_vectors;
	ret = request_irq(pci_irq_vector(pdev, P2PGPU_VECTOR_CK), p2pgpu_ck_irq,
			  0, g->name, g);
	if (ret)
		goto err_ce_irq;

	p2pgpu_wr(g, P2PGPU_REG_INTR_STATUS, P2PGPU_INTR_CE | P2PGPU_INTR_CK);
	p2pgpu_wr(g, P2PGPU_REG_INTR_ENABLE, P2PGPU_INTR_CE | P2PGPU_INTR_CK);
	ret = p2pgpu_ce_start(g);
	if (ret)
		goto err_ck_irq;

	/* The page-less provider (dma-buf) works without the p2pmem pages. */
	ret = pcim_p2pdma_init(pdev);
	if (!ret)
		g->provider = pcim_p2pdma_provider(pdev, 2);
	if (!g->provider)
		pci_warn(pdev, "no P2PDMA provider for BAR2 (%d): dma-buf export disabled\n",
			 ret);
	p2pgpu_publish_p2pmem(g);

	g->misc.minor = MISC_DYNAMIC_MINOR;
	g->misc.name = g->name;
	g->misc.fops = &p2pgpu_fops;
	g->misc.parent = &pdev->dev;
	ret = misc_register(&g->misc);
	if (ret)
		goto err_stop;

	pci_set_drvdata(pdev, g);
	pci_info(pdev, "%s: VRAM %llu MiB at bus %#llx, p2pmem %#llx+%#llx\n",
		 g->name, g->vram_size >> 20, (u64)g->bar2_bus,
		 g->p2pmem_offset, g->p2pmem_size);
	return 0;

err_stop:
	if (g->p2pmem_size)
		pci_p2pmem_publish(pdev, false);
	p2pgpu_ce_stop(g);
	p2pgpu_wr(g, P2PGPU_REG_INTR_ENABLE, 0);
err_ck_irq:
	free_irq(pci_irq_vector(pdev, P2PGPU_VECTOR_CK), g);
err_ce_irq:
	free_irq(pci_irq_vector(pdev, P2PGPU_VECTOR_CE), g);
err_vectors:
	pci_free_irq_vectors(pdev);
err_ida:
	ida_free(&p2pgpu_ida, g->id);
err_put:
	kref_put(&g->ref, p2pgpu_release);
	return ret;
}

static void p2pgpu_remove(struct pci_dev *pdev)
{
	struct p2pgpu_dev *g = pci_get_drvdata(pdev);

	misc_deregister(&g->misc);

	/* Waits for a running ioctl; later ones see dead and fail. */
	mutex_lock(&g->lock);
	g->dead = true;
	/* The ring and bounce buffer are freed by devres after we return. */
	p2pgpu_ce_stop(g);
	p2pgpu_wr(g, P2PGPU_REG_INTR_ENABLE, 0);
	mutex_unlock(&g->lock);

	p2pgpu_revoke_dmabufs(g);
	if (g->p2pmem_size)
		pci_p2pmem_publish(pdev, false);
	free_irq(pci_irq_vector(pdev, P2PGPU_VECTOR_CK), g);
	free_irq(pci_irq_vector(pdev, P2PGPU_VECTOR_CE), g);
	pci_free_irq_vectors(pdev);
	ida_free(&p2pgpu_ida, g->id);
	kref_put(&g->ref, p2pgpu_release);
}

static const struct pci_device_id p2pgpu_ids[] = {
	{ PCI_DEVICE(P2PGPU_PCI_VENDOR_ID, P2PGPU_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, p2pgpu_ids);

static struct pci_driver p2pgpu_driver = {
	.name = KBUILD_MODNAME,
	.id_table = p2pgpu_ids,
	.probe = p2pgpu_probe,
	.remove = p2pgpu_remove,
};
module_pci_driver(p2pgpu_driver);

MODULE_DESCRIPTION("p2plab GPU-like test device: p2pmem, dma-buf export, copy and checksum engines");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS("DMA_BUF");
