use super::*;

fn dev(name: &str, host_read: u64, peer: Option<(&str, u64)>) -> DeviceSnapshot {
    let mut d = DeviceSnapshot {
        name: name.into(),
        kind: "nvme".into(),
        ..Default::default()
    };
    d.dma.host_memory.read_bytes = host_read;
    d.dma.host_memory.ops = host_read / 4096;
    d.errors
        .insert("status_invalid_field_in_command".into(), host_read / 4096);
    if let Some((p, n)) = peer {
        d.dma.peers.insert(
            p.into(),
            DirSnapshot {
                write_bytes: n,
                ops: 1,
                ..Default::default()
            },
        );
        d.inbound.peers.insert(
            p.into(),
            BytesSnapshot {
                read_bytes: n,
                write_bytes: 0,
            },
        );
    }
    d
}

#[test]
fn json_shape_is_the_contract() {
    let c = Counters {
        devices: vec![dev("nvme0", 4096, Some(("gpu0", 64)))],
        process: Some(ProcessSnapshot { rss_bytes: 7 }),
        error: None,
    };
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["devices"][0]["dma"]["self"]["ops"], 0);
    assert_eq!(v["devices"][0]["dma"]["peers"]["gpu0"]["write_bytes"], 64);
    assert_eq!(v["devices"][0]["inbound"]["cpu_mmio"]["read_bytes"], 0);
    assert_eq!(v["devices"][0]["bar_resident_bytes"], 0);
    assert_eq!(v["process"]["rss_bytes"], 7);
    let back: Counters = serde_json::from_value(v).unwrap();
    assert_eq!(back, c);
    // The fabric's own snapshot (no process, no resident bytes) still parses.
    let bare = r#"{"devices":[{"name":"g","kind":"gpu","dma":{"host_memory":{"read_bytes":1,"write_bytes":2,"ops":3},"self":{"read_bytes":0,"write_bytes":0,"ops":0},"peers":{},"client_relay":{"read_bytes":0,"write_bytes":0,"ops":0}},"inbound":{"peers":{},"cpu_mmio":{"read_bytes":0,"write_bytes":0}}}]}"#;
    let c: Counters = serde_json::from_str(bare).unwrap();
    assert_eq!(c.devices[0].dma.host_memory.ops, 3);
    assert_eq!(c.process, None);
    assert!(!serde_json::to_string(&c).unwrap().contains("process"));
}

#[test]
fn since_matches_devices_by_name_and_counts_new_peers_from_zero() {
    let begin = Counters {
        devices: vec![dev("gpu0", 0, None), dev("nvme0", 8192, None)],
        process: None,
        error: None,
    };
    let end = Counters {
        devices: vec![
            dev("nvme0", 12288, Some(("gpu0", 64))),
            dev("gpu0", 0, None),
        ],
        process: Some(ProcessSnapshot { rss_bytes: 9 }),
        error: None,
    };
    let d = end.since(&begin);
    let n = d.device("nvme0").unwrap();
    assert_eq!(n.dma.host_memory.read_bytes, 4096);
    assert_eq!(n.dma.host_memory.ops, 1);
    assert_eq!(n.errors["status_invalid_field_in_command"], 1);
    assert_eq!(n.dma.peers["gpu0"].write_bytes, 64);
    assert_eq!(d.devices[0].name, "nvme0", "order of the end snapshot");
    assert_eq!(d.process, Some(ProcessSnapshot { rss_bytes: 9 }));
    // A counter that went backwards (restarted lab) reads 0, never wraps.
    assert_eq!(
        begin
            .since(&end)
            .device("nvme0")
            .unwrap()
            .dma
            .host_memory
            .read_bytes,
        0
    );
}

#[test]
fn paths_parse_print_and_look_up() {
    let c = Counters {
        devices: vec![dev("nvme0", 4096, Some(("gpu0", 64)))],
        process: Some(ProcessSnapshot { rss_bytes: 5 }),
        error: None,
    };
    for (p, want) in [
        ("devices[nvme0].dma.peers.gpu0.write_bytes", Some(64)),
        ("devices[nvme0].dma.host_memory.read_bytes", Some(4096)),
        ("devices[nvme0].dma.self.ops", Some(0)),
        ("devices[nvme0].inbound.peers.gpu0.read_bytes", Some(64)),
        ("devices[nvme0].inbound.cpu_mmio.write_bytes", Some(0)),
        ("devices[nvme0].bar_resident_bytes", Some(0)),
        ("devices[nvme0].dma.faults.write_bytes", Some(0)),
        (
            "devices[nvme0].errors.status_invalid_field_in_command",
            Some(1),
        ),
        ("devices[nvme0].errors.status_lba_out_of_range", None),
        ("devices[nvme0].dma.peers.gpu1.write_bytes", None),
        ("devices[gpu9].dma.self.ops", None),
        ("process.rss_bytes", Some(5)),
    ] {
        let path: CounterPath = p.parse().unwrap();
        assert_eq!(path.to_string(), p);
        assert_eq!(c.get(&path), want, "{p}");
    }
}

#[test]
fn misspelt_paths_are_errors() {
    for p in [
        "devices[nvme0].dma.peer.gpu0.write_bytes",
        "devices[nvme0].dma.host_memory.write",
        "devices[nvme0].inbound.cpu_mmio.ops",
        "devices[].dma.self.ops",
        "devices[nvme0]dma.self.ops",
        "devices[{client}].dma.self.ops",
        "dma.self.ops",
        "process.rss",
    ] {
        assert!(p.parse::<CounterPath>().is_err(), "{p}");
    }
}

#[test]
fn leaves_name_every_numeric_counter_and_round_trip() {
    let c = Counters {
        devices: vec![dev("nvme0", 4096, Some(("gpu0", 64)))],
        process: None,
        error: None,
    };
    let leaves = c.leaves();
    // 5 routes (faults included) × 3 fields + 2 inbound × 2 fields + 1 error; no levels
    assert_eq!(leaves.len(), 15 + 4 + 1);
    for (path, v) in &leaves {
        let reparsed: CounterPath = path.to_string().parse().unwrap();
        assert_eq!(c.get(&reparsed), Some(*v));
    }
}
