/* SPDX-License-Identifier: GPL-2.0 */
/*
 * p2pgpu: the device's register map (BAR0), interrupt bits and copy descriptor
 * bits, as the p2plab-gpu device model (devices/gpu/src/regs.rs, copy.rs)
 * defines them. The names are the Rust constants' with a P2PGPU_ prefix
 * (P2PGPU_REG_ for register offsets); devices/gpu/tests/c_header.rs parses
 * this file and fails when a value differs from the device model's.
 */
#ifndef _P2PGPU_REGS_H
#define _P2PGPU_REGS_H

#include <linux/bits.h>

/* BAR0 registers. */
#define P2PGPU_REG_ID			0x000
#define P2PGPU_REG_VERSION		0x004
#define P2PGPU_REG_VRAM_SIZE_LO		0x008
#define P2PGPU_REG_VRAM_SIZE_HI		0x00c
#define P2PGPU_REG_STATUS		0x010
#define P2PGPU_REG_INTR_STATUS		0x020
#define P2PGPU_REG_INTR_ENABLE		0x024
#define P2PGPU_REG_CE_RING_BASE_LO	0x100
#define P2PGPU_REG_CE_RING_BASE_HI	0x104
#define P2PGPU_REG_CE_RING_SIZE		0x108
#define P2PGPU_REG_CE_HEAD		0x10c
#define P2PGPU_REG_CE_TAIL		0x110
#define P2PGPU_REG_CE_CTRL		0x114
#define P2PGPU_REG_CE_STATUS		0x118
#define P2PGPU_REG_CK_OFFSET_LO		0x200
#define P2PGPU_REG_CK_OFFSET_HI		0x204
#define P2PGPU_REG_CK_LEN_LO		0x208
#define P2PGPU_REG_CK_LEN_HI		0x20c
#define P2PGPU_REG_CK_CTRL		0x210
#define P2PGPU_REG_CK_STATUS		0x214
#define P2PGPU_REG_CK_ALGO		0x218
#define P2PGPU_REG_CK_DIGEST		0x240

#define P2PGPU_ID_VALUE			0x47503250	/* "P2PG" */

#define P2PGPU_INTR_CE_DONE		BIT(0)
#define P2PGPU_INTR_CE_ERROR		BIT(1)
#define P2PGPU_INTR_CK_DONE		BIT(2)
#define P2PGPU_INTR_CK_ERROR		BIT(3)

#define P2PGPU_VECTOR_CE		0
#define P2PGPU_VECTOR_CK		1

#define P2PGPU_CE_CTRL_ENABLE		BIT(0)
#define P2PGPU_CE_STATUS_HALTED		BIT(2)
#define P2PGPU_CE_STATUS_ACTIVE		BIT(3)

#define P2PGPU_CK_CTRL_START		BIT(0)
#define P2PGPU_CK_STATUS_BUSY		BIT(0)
#define P2PGPU_CK_STATUS_DONE		BIT(1)
#define P2PGPU_CK_STATUS_ERROR		BIT(2)

/* Copy descriptor (struct p2pgpu_desc): size, flags and status bits. */
#define P2PGPU_DESC_SIZE		32
#define P2PGPU_DESC_FLAG_INTERRUPT	BIT(0)
#define P2PGPU_DESC_STATUS_DONE		BIT(0)
#define P2PGPU_DESC_STATUS_ERROR	BIT(1)

#endif /* _P2PGPU_REGS_H */
