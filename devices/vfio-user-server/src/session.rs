//! Per-connection request handlers: decoded request in, `Result<reply payload, Errno>` out.

use crate::dma::ClientDma;
use crate::irq::Irqs;
use crate::link::Link;
use crate::{Client, Device, DeviceInfo, Errno, RegionInfo, ServerConfig};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use vfio_user_proto::wire::{self, CapHeader, SparseMmap, SparseMmapArea, WriteMulti};
use vfio_user_proto::*;
use zerocopy::IntoBytes;

/// A successful reply: payload and at most one fd.
pub(crate) struct Reply {
    pub payload: Vec<u8>,
    pub fd: Option<Arc<File>>,
}

impl Reply {
    fn empty() -> Self {
        Reply {
            payload: Vec::new(),
            fd: None,
        }
    }
    fn bytes(payload: Vec<u8>) -> Self {
        Reply { payload, fd: None }
    }
}

pub(crate) struct Session {
    device: Arc<dyn Device>,
    config: ServerConfig,
    pub(crate) link: Arc<Link>,
    dma: Arc<ClientDma>,
    irqs: Arc<Irqs>,
    info: DeviceInfo,
    regions: Vec<Option<RegionInfo>>,
    irq_count: u32,
    pub(crate) client: Option<Arc<Client>>,
    /// Set by VERSION; the loop calls `Device::connected` before sending the reply.
    pub(crate) just_connected: Option<Arc<Client>>,
}

impl Session {
    pub(crate) fn new(device: Arc<dyn Device>, config: ServerConfig, link: Arc<Link>) -> Self {
        let mut info = device.device_info();
        if info.num_regions > config.max_regions {
            log::warn!(
                "device reports {} regions; serving the first {}",
                info.num_regions,
                config.max_regions
            );
            info.num_regions = config.max_regions;
        }
        let regions = (0..info.num_regions)
            .map(|i| device.region_info(i))
            .collect();
        let irq_infos: Vec<(u32, u32)> = (0..info.num_irqs)
            .map(|i| device.irq_info(i).map_or((0, 0), |q| (q.flags, q.count)))
            .collect();
        let irqs = Arc::new(Irqs::new(&irq_infos));
        let dma = Arc::new(ClientDma::new(
            link.clone(),
            config.max_dma_maps as usize,
            config.unmap_wait,
            config.dma_rw_layout,
            config.max_dma_read,
            config.seal_dma_fds,
        ));
        Session {
            device,
            irq_count: info.num_irqs,
            config,
            link,
            dma,
            irqs,
            info,
            regions,
            client: None,
            just_connected: None,
        }
    }

    /// Handle one request whose payload was fully read.
    pub(crate) fn handle(
        &mut self,
        hdr: &Header,
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<Reply, Errno> {
        let req = decode_request(hdr, payload).map_err(|e| {
            log::debug!("{}: {e}", hdr.command());
            Errno(e.errno() as i32)
        })?;
        if self.client.is_none() && !matches!(req, Request::Version { .. }) {
            log::debug!("{} before VERSION", hdr.command());
            return Err(Errno::EINVAL);
        }
        let takes_fds = matches!(req, Request::DmaMap(_) | Request::SetIrqs { .. });
        if !takes_fds && !fds.is_empty() {
            return Err(Errno::EINVAL);
        }
        match req {
            Request::Version { major, minor, caps } => self.version(major, minor, caps),
            Request::DmaMap(m) => {
                if fds.len() > 1 {
                    return Err(Errno::EINVAL);
                }
                let fd = fds.into_iter().next().map(|fd| (fd, m.offset));
                self.dma.add(m.iova, m.size, m.flags, fd)?;
                Ok(Reply::empty())
            }
            Request::DmaUnmap(u) => {
                if u.flags & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
                    return Err(Errno::ENOTSUP);
                }
                if u.flags & !DMA_UNMAP_FLAG_ALL != 0 {
                    return Err(Errno::EINVAL);
                }
                if u.flags & DMA_UNMAP_FLAG_ALL != 0 {
                    if u.iova != 0 || u.size != 0 {
                        return Err(Errno::EINVAL);
                    }
                    self.dma.clear();
                } else {
                    self.dma.remove(u.iova, u.size)?;
                }
                let echo = wire::DmaUnmap {
                    argsz: wire::DmaUnmap::SIZE as u32,
                    ..u
                };
                Ok(Reply::bytes(echo.as_bytes().to_vec()))
            }
            Request::DeviceGetInfo(_) => {
                let r = wire::DeviceInfo {
                    argsz: wire::DeviceInfo::SIZE as u32,
                    flags: self.info.flags,
                    num_regions: self.info.num_regions,
                    num_irqs: self.info.num_irqs,
                };
                Ok(Reply::bytes(r.as_bytes().to_vec()))
            }
            Request::GetRegionInfo(q) => self.region_info(q.index, q.argsz),
            Request::GetIrqInfo(q) => {
                if q.index >= self.irq_count {
                    return Err(Errno::EINVAL);
                }
                let i = self.device.irq_info(q.index).ok_or(Errno::EINVAL)?;
                let r = wire::IrqInfo {
                    argsz: wire::IrqInfo::SIZE as u32,
                    flags: i.flags,
                    index: q.index,
                    count: i.count,
                };
                Ok(Reply::bytes(r.as_bytes().to_vec()))
            }
            Request::SetIrqs { set, data } => {
                if set.index >= self.irq_count {
                    return Err(Errno::EINVAL);
                }
                self.irqs.set_irqs(&set, data, fds)?;
                Ok(Reply::empty())
            }
            Request::RegionRead(a) => {
                self.check_access(a.region, a.offset, a.count, REGION_INFO_FLAG_READ)?;
                let mut buf = vec![0u8; a.count as usize];
                self.device.region_read(a.region, a.offset, &mut buf)?;
                let mut p = a.as_bytes().to_vec();
                p.extend_from_slice(&buf);
                Ok(Reply::bytes(p))
            }
            Request::RegionWrite { access: a, data } => {
                self.check_access(a.region, a.offset, a.count, REGION_INFO_FLAG_WRITE)?;
                self.device.region_write(a.region, a.offset, data)?;
                Ok(Reply::bytes(a.as_bytes().to_vec()))
            }
            Request::RegionWriteMulti(writes) => {
                for w in &writes {
                    self.check_access(w.region, w.offset, w.count, REGION_INFO_FLAG_WRITE)?;
                    // count <= 8 was checked by the decoder.
                    self.device
                        .region_write(w.region, w.offset, &w.data[..w.count as usize])?;
                }
                Ok(Reply::bytes(
                    WriteMulti {
                        wr_cnt: writes.len() as u64,
                    }
                    .as_bytes()
                    .to_vec(),
                ))
            }
            Request::DeviceReset => {
                self.device.reset();
                Ok(Reply::empty())
            }
        }
    }

    fn version(&mut self, major: u16, minor: u16, caps: Capabilities) -> Result<Reply, Errno> {
        if self.client.is_some() {
            return Err(Errno::EINVAL);
        }
        if major != 0 {
            log::warn!("client speaks vfio-user {major}.{minor}; only 0.x is supported");
            return Err(Errno::ENOTSUP);
        }
        let max_maps = u64::from(self.config.max_dma_maps)
            .min(caps.max_dma_maps)
            .max(1);
        let ours = Capabilities {
            max_msg_fds: self.config.max_msg_fds.into(),
            max_data_xfer_size: self.config.max_data_xfer_size.into(),
            pgsizes: caps::DEFAULT_PGSIZES,
            max_dma_maps: max_maps,
            write_multiple: true,
            migration: None,
        };
        // QEMU adopts the server's max_data_xfer_size for both directions.
        self.link.max_xfer.store(
            self.config.max_data_xfer_size as usize,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.dma.set_max_maps(max_maps as usize);
        log::debug!("VERSION {major}.{minor} caps {caps:?}");
        let client = Arc::new(Client {
            dma: self.dma.clone(),
            irqs: self.irqs.clone(),
            caps,
        });
        self.client = Some(client.clone());
        self.just_connected = Some(client);
        let mut p = wire::Version { major: 0, minor: 0 }.as_bytes().to_vec();
        p.extend_from_slice(&emit_capabilities(&ours));
        Ok(Reply::bytes(p))
    }

    fn region(&self, index: u32) -> Result<&RegionInfo, Errno> {
        self.regions
            .get(index as usize)
            .and_then(Option::as_ref)
            .ok_or(Errno::EINVAL)
    }

    fn check_access(&self, index: u32, offset: u64, count: u32, need: u32) -> Result<(), Errno> {
        let r = self.region(index)?;
        if count > self.config.max_data_xfer_size {
            return Err(Errno::E2BIG);
        }
        let end = offset.checked_add(count.into()).ok_or(Errno::EINVAL)?;
        if end > r.size || r.flags & need == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    fn region_info(&self, index: u32, argsz: u32) -> Result<Reply, Errno> {
        let r = self.region(index)?;
        let n = r.mmap_areas.len();
        let caps_len = if n == 0 {
            0
        } else {
            CapHeader::SIZE + SparseMmap::SIZE + n * SparseMmapArea::SIZE
        };
        let needed = u32::try_from(wire::RegionInfo::SIZE + caps_len).map_err(|_| Errno::E2BIG)?;
        let mut info = wire::RegionInfo {
            argsz: needed,
            flags: r.flags & !REGION_INFO_FLAG_CAPS,
            index,
            cap_offset: 0,
            size: r.size,
            offset: r.fd_offset,
        };
        if caps_len > 0 && argsz < needed {
            // Too small for the capability chain: say how much is needed, no caps, no
            // fd; the client asks again (QEMU rejects CAPS with cap_offset 0).
            return Ok(Reply::bytes(info.as_bytes().to_vec()));
        }
        let mut p = Vec::with_capacity(needed as usize);
        if caps_len > 0 {
            info.flags |= REGION_INFO_FLAG_CAPS;
            info.cap_offset = wire::RegionInfo::SIZE as u32;
        }
        p.extend_from_slice(info.as_bytes());
        if caps_len > 0 {
            let h = CapHeader {
                id: REGION_INFO_CAP_SPARSE_MMAP,
                version: REGION_INFO_CAP_SPARSE_MMAP_VERSION,
                next: 0,
            };
            p.extend_from_slice(h.as_bytes());
            p.extend_from_slice(
                SparseMmap {
                    nr_areas: n as u32,
                    reserved: 0,
                }
                .as_bytes(),
            );
            for a in &r.mmap_areas {
                p.extend_from_slice(
                    SparseMmapArea {
                        offset: a.offset,
                        size: a.size,
                    }
                    .as_bytes(),
                );
            }
        }
        let fd = if r.flags & REGION_INFO_FLAG_MMAP != 0 {
            r.fd.clone()
        } else {
            None
        };
        Ok(Reply { payload: p, fd })
    }

    /// The connection ended: drop maps and fds, tell the device.
    pub(crate) fn teardown(&mut self) {
        self.link.close();
        self.dma.clear();
        self.irqs.clear();
        if self.client.take().is_some() {
            self.device.disconnected();
        }
    }
}
