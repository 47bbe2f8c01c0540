//! CAR v1 round trip, piece CID against Lotus-generated vectors, deal batches.

use crate::common;

use std::collections::HashMap;

use comine::store::car::CarReader;
use comine::store::commp::{self, CommP};
use comine::store::deals::{self, BatchState, DealConfig};
use comine::store::{AddOptions, Store, CHUNK_SIZE};

#[test]
fn car_round_trip_same_root_and_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for opts in [
        AddOptions::default(),
        AddOptions {
            cid_version: 1,
            raw_leaves: None,
        },
    ] {
        let data = common::data(5 * CHUNK_SIZE + 11, 5);
        let added = store.add_bytes(&data, &opts).unwrap();
        let mut car = Vec::new();
        let written = store.car_export(&added.cid, &mut car).unwrap();
        assert_eq!(written, car.len() as u64);

        let mut expected = HashMap::new();
        store
            .walk(&added.cid, &mut |cid, b| {
                expected.insert(*cid, b.to_vec());
                Ok(())
            })
            .unwrap();

        let mut reader = CarReader::new(&car[..]).unwrap();
        assert_eq!(reader.roots, vec![added.cid]);
        let mut got = HashMap::new();
        while let Some((cid, block)) = reader.next_block().unwrap() {
            assert!(got.insert(cid, block).is_none(), "block written twice");
        }
        assert_eq!(got, expected);

        // Import into a fresh store and read the file back.
        let dir2 = tempfile::tempdir().unwrap();
        let store2 = Store::open(dir2.path()).unwrap();
        for (cid, block) in &got {
            store2.put_block(cid, block).unwrap();
        }
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut store2.cat(&added.cid).unwrap(), &mut back).unwrap();
        assert!(back == data);
    }
}

#[test]
fn corrupted_car_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let added = store
        .add_bytes(&common::data(1000, 1), &AddOptions::default())
        .unwrap();
    let mut car = Vec::new();
    store.car_export(&added.cid, &mut car).unwrap();
    let last = car.len() - 1;
    car[last] ^= 0xff;
    let mut reader = CarReader::new(&car[..]).unwrap();
    assert!(reader.next_block().is_err());
    assert!(CarReader::new(&b"garbage"[..]).is_err());
}

/// Vectors from go-fil-commp-hashhash `testdata/{zero,0xCC}.txt`, produced by Lotus'
/// `ClientCalcCommP` (filecoin-ffi's generate_piece_commitment) over files of SIZE bytes.
const ZERO: &str = "96,128,baga6ea4seaqdomn3tgwgrh3g532zopskstnbrd2n3sxfqbze7rxt7vqn7veigmy
127,128,baga6ea4seaqdomn3tgwgrh3g532zopskstnbrd2n3sxfqbze7rxt7vqn7veigmy
192,256,baga6ea4seaqgiktap34inmaex4wbs6cghlq5i2j2yd2bb2zndn5ep7ralzphkdy
255,512,baga6ea4seaqfpirydiugkk7up5v666wkm6n6jlw6lby2wxht5mwaqekerdfykjq
509,1024,baga6ea4seaqb66wjlfkrbye6uqoemcyxmqylwmrm235uclwfpsyx3ge2imidoly
1024,2048,baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy";

const CC: &str = "96,128,baga6ea4seaqhwcjhi4krhl3ht6dewnwevkpxbepxy7p7onwgz65t52typbsysby
126,128,baga6ea4seaqapbh46gdnszvb7fcinevsy5bzg3b4higkh7groptswf6zas6jamy
127,128,baga6ea4seaqmfldjtozgne6adk7eve2vdxte7vzlivae7nzsbrawobo546zkijq
192,256,baga6ea4seaqkx7m2s6r4zahtlbwrs5ryvemkclwfp7nijopdd5swpdnxzjf7wkq
253,256,baga6ea4seaql6ldbyafhiecr36xba5tufreyo4km2ts3lfknhl2zogp3aztxijy
254,256,baga6ea4seaqkixbzz75uys2pcjbrbdilgjhmum72qm4xphrwav2iyel5oat4aka
255,512,baga6ea4seaqg7celu5y2iwbi2ra5koygvotxtzr5lj6vzvxi6gfub6mpa6niwpi
256,512,baga6ea4seaqi7c3dnwkqysqh4lpkz5jaxz2d2f5bvo3ttu2hnfmdewhcoji56na
384,512,baga6ea4seaqhexlmnzbarsbdbdahs7e36dkq5vkdwsrttehoakrif5wiqme36lq
507,512,baga6ea4seaqenvh5mcy5cjqwsbubbpczprkk2onwvfjd2743zkqh6ofuzkatwey
508,512,baga6ea4seaqb6ckbupixkhwp7thgb52f4en222boppajkqk7gaomkpof3lh4cei
509,1024,baga6ea4seaqdzbeaexq6gpbqh2tlnbz5mm5neap2kejsketkogzd6x2dx7dzkii
512,1024,baga6ea4seaqojaa522sjqms2wipasjbxnjgytunsgp52tgrfcofj73f7q7ou6hy
768,1024,baga6ea4seaqb6xvxaybzp6vslujjiwvgt23ckrwt7y53eddy5qmc6csnc37lwpi
1015,1024,baga6ea4seaqmgiyjcutwgo6glks2mogixs6mb4sbehto6uzienucfx23wbtkica
1016,1024,baga6ea4seaqjxgfdkdu37aryhg7bqqiwizj5f6ugasftgeocabwnj4cxkgisaoq
1017,2048,baga6ea4seaqf3n5ob5qonkwnxfcbjzftsagbnrjfzualqvzhcylz46b7sgz6wmi
1024,2048,baga6ea4seaqdlpnhgsndrgjeu4p46hahlsr4lybg6du4d56ooppdpxhcofxeuoi";

fn check_vectors(table: &str, byte: u8) {
    for line in table.lines() {
        let f: Vec<&str> = line.trim().split(',').collect();
        let size: usize = f[0].parse().unwrap();
        let padded: u64 = f[1].parse().unwrap();
        let (cid, got_padded, payload) = commp::piece_cid(&vec![byte; size][..]).unwrap();
        assert_eq!(cid.to_string(), f[2], "size {size} of 0x{byte:02x}");
        assert_eq!(got_padded, padded, "size {size}");
        assert_eq!(payload, size as u64);
    }
}

#[test]
fn commp_matches_lotus_vectors_zero() {
    check_vectors(ZERO, 0);
}

#[test]
fn commp_matches_lotus_vectors_0xcc() {
    check_vectors(CC, 0xcc);
}

#[test]
fn commp_streaming_equals_one_shot_on_large_input() {
    let data = common::data(3 * 1024 * 1024 + 5, 11);
    let one = commp::piece_cid(&data[..]).unwrap();
    let mut c = CommP::new();
    for part in data.chunks(4099) {
        c.update(part);
    }
    assert_eq!(c.finish(), one);
    assert_eq!(one.1, 4 * 1024 * 1024);
    assert!(one.0.to_string().starts_with("baga6ea4sea"));
}

/// Our streaming CommP against filecoin-proofs' own `generate_piece_commitment` (through
/// filecoin-proofs-api, which the default `seal-builtin` feature brings in).
#[cfg(feature = "seal-builtin")]
#[test]
fn commp_matches_filecoin_proofs() {
    for (len, seed) in [
        (1usize, 1u64),
        (127, 2),
        (128, 3),
        (1000, 4),
        (4064, 5),
        (70_000, 6),
    ] {
        let bytes = common::data(len, seed);
        let (ours, padded, payload) = commp::piece_cid(&bytes[..]).unwrap();
        let reference = comine::bench::commp_reference(&bytes).unwrap();
        assert_eq!(ours, reference, "piece CID of {len} bytes");
        assert_eq!(payload, len as u64);
        assert!(padded.is_power_of_two() && padded >= 128 && padded * 127 / 128 >= len as u64);
    }
}

#[test]
fn deal_batches_pack_and_track_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut cids = Vec::new();
    for i in 0..5 {
        cids.push(
            store
                .add_bytes(
                    &common::data(CHUNK_SIZE + i * 1000, i as u64),
                    &AddOptions::default(),
                )
                .unwrap()
                .cid,
        );
    }
    // About two renditions per batch.
    let batches = deals::pack(&store, 2 * CHUNK_SIZE as u64 + 20_000).unwrap();
    assert_eq!(batches.len(), 3);
    let mut items = 0;
    for b in &batches {
        assert_eq!(b.state, BatchState::Ready);
        items += b.items.len();
        let car = std::fs::read(&b.car_path).unwrap();
        assert_eq!(car.len() as u64, b.car_size);
        assert!(b.car_size <= 2 * CHUNK_SIZE as u64 + 20_000);
        let (piece, padded, _) = commp::piece_cid(&car[..]).unwrap();
        assert_eq!(piece.to_string(), b.piece_cid);
        assert_eq!(padded, b.padded_size);
        let reader = CarReader::new(&car[..]).unwrap();
        assert_eq!(reader.roots[0].to_string(), b.payload_cid);
    }
    assert_eq!(items, 5);
    // Nothing left to pack.
    assert!(deals::pack(&store, 1 << 30).unwrap().is_empty());

    let id = &batches[0].id;
    let cfg = DealConfig {
        provider: Some("f01000".into()),
        ..Default::default()
    };
    let cmds = deals::commands(&batches[0], &cfg);
    assert_eq!(
        cmds.boost[..2],
        ["boost".to_string(), "offline-deal".to_string()]
    );
    assert!(cmds
        .boost
        .contains(&format!("--commp={}", batches[0].piece_cid)));
    assert!(cmds
        .boost
        .contains(&format!("--piece-size={}", batches[0].padded_size)));
    assert!(cmds
        .boost
        .contains(&format!("--payload-cid={}", batches[0].payload_cid)));
    assert!(cmds.boost.contains(&"--provider=f01000".to_string()));
    assert_eq!(cmds.boostd[1], "import-data");

    assert!(
        deals::set_state(&store, id, BatchState::Active, None, None).is_err(),
        "ready cannot jump to active"
    );
    deals::set_state(
        &store,
        id,
        BatchState::Proposed,
        Some("9e68fb16-ff9a-488e-ad0a-1289b512d176".into()),
        None,
    )
    .unwrap();
    deals::set_state(&store, id, BatchState::Imported, None, None).unwrap();
    deals::set_state(&store, id, BatchState::Active, None, None).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let b = deals::get(&store, id).unwrap();
    assert_eq!(b.state, BatchState::Active);
    assert_eq!(
        deals::commands(&b, &cfg).boostd[2],
        "9e68fb16-ff9a-488e-ad0a-1289b512d176"
    );
}

#[test]
fn deal_run_with_fake_boost_moves_states() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.add_bytes(b"segment", &AddOptions::default()).unwrap();
    let b = deals::pack(&store, 1 << 20).unwrap().remove(0);
    let boost = dir.path().join("boost");
    std::fs::write(&boost, "#!/bin/sh\necho \"$@\" > \"$0.args\"\necho 'sent deal proposal'\necho '  deal uuid: 11111111-2222-3333-4444-555555555555'\n").unwrap();
    std::fs::set_permissions(&boost, std::fs::Permissions::from_mode(0o755)).unwrap();
    let boostd = dir.path().join("boostd");
    std::fs::write(&boostd, "#!/bin/sh\necho \"$@\" > \"$0.args\"\n").unwrap();
    std::fs::set_permissions(&boostd, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = DealConfig {
        provider: Some("f01000".into()),
        boost_bin: Some(boost.display().to_string()),
        boostd_bin: Some(boostd.display().to_string()),
        ..Default::default()
    };
    let done = deals::run(&store, &b.id, &cfg).unwrap();
    assert_eq!(done.state, BatchState::Imported);
    assert_eq!(
        done.deal_uuid.as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );
    let args = std::fs::read_to_string(dir.path().join("boostd.args")).unwrap();
    assert!(
        args.contains("import-data 11111111-2222-3333-4444-555555555555") && args.contains(".car"),
        "{args}"
    );

    // A failing boost marks the batch failed with its output.
    store.add_bytes(b"another", &AddOptions::default()).unwrap();
    let b2 = deals::pack(&store, 1 << 20).unwrap().remove(0);
    std::fs::write(
        &boost,
        "#!/bin/sh\necho 'provider rejected deal' >&2\nexit 1\n",
    )
    .unwrap();
    assert!(deals::run(&store, &b2.id, &cfg).is_err());
    let failed = deals::get(&store, &b2.id).unwrap();
    assert_eq!(failed.state, BatchState::Failed);
    assert!(failed.error.unwrap().contains("provider rejected deal"));
}
