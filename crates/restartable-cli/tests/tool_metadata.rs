//! Tool metadata (issue 9 item 5): debuggers and tracers find our critical sections the way they
//! find the C reference library's, through two arrays beside `__rseq_cs`. Read from the shipped
//! `restartable` binary (a PIE: every address word is an R_X86_64_RELATIVE relocation):
//!
//! - `__rseq_cs_ptr_array`: one entry per descriptor, each the address of a descriptor in
//!   `__rseq_cs`, every descriptor listed once;
//! - `__rseq_exit_point_array`: every `(start_ip, exit_ip)` pair names a descriptor's start_ip
//!   and an exit in executable code outside that section; every descriptor has at least two
//!   exits (abort and stopped), and those with a comparison a third.

use testkit::elf::RseqElf;

const BIN: &str = env!("CARGO_BIN_EXE_restartable");

#[test]
fn the_binary_lists_every_descriptor_and_every_exit() {
    let elf = RseqElf::read(BIN).unwrap_or_else(|e| panic!("{e}"));
    let problems = elf.tool_metadata_problems();
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));

    // 7 ops x 2 index modes at least (each inlined copy has its own descriptor).
    assert!(elf.descriptors.len() >= 14, "{} descriptors", elf.descriptors.len());
    assert_eq!(elf.cs_ptrs.len(), elf.descriptors.len());
    let exits = elf.exits_by_start();
    assert_eq!(exits.len(), elf.descriptors.len(), "every descriptor has exit points");
    // Ops with a comparison (cbne_store, cbeq_pop, ...) have a third exit: compare-failed.
    let with_compare = exits.values().filter(|e| e.len() >= 3).count();
    assert!(with_compare > 0, "no section lists a compare-failed exit");
    eprintln!(
        "{} descriptors, {} pointers, {} exit points ({} sections with a compare-failed exit)",
        elf.descriptors.len(),
        elf.cs_ptrs.len(),
        elf.exit_points.len(),
        with_compare
    );
}

/// The reader itself catches a broken array: a pointer that names no descriptor, a missing one,
/// and an exit inside its own section.
#[test]
fn the_checks_catch_broken_metadata() {
    let mut elf = RseqElf::read(BIN).unwrap_or_else(|e| panic!("{e}"));
    let first = elf.descriptors[0];
    elf.cs_ptrs[0] += 8;
    elf.exit_points.push((first.start_ip, first.start_ip + first.post_commit_offset - 1));
    let problems = elf.tool_metadata_problems().join("\n");
    assert!(problems.contains("is not the address of a descriptor"), "{problems}");
    assert!(problems.contains(&format!("descriptor {:#x} is not in __rseq_cs_ptr_array", first.addr)), "{problems}");
    assert!(problems.contains("is inside its section"), "{problems}");
}
