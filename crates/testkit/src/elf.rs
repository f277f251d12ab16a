//! The rseq metadata of an ELF file, read the way debuggers and tracers read it.
//!
//! A binary built on `restartable` (as one built on the C reference library, librseq) has:
//!
//! - `__rseq_cs`: one 32-byte `struct rseq_cs` per critical section (`version u32, flags u32,
//!   start_ip u64, post_commit_offset u64, abort_ip u64`);
//! - `__rseq_cs_ptr_array`: the address of every descriptor (one `u64` each);
//! - `__rseq_exit_point_array`: every exit from a section other than its end (abort,
//!   compare-failed, stopped) as a `(start_ip u64, exit_ip u64)` pair.
//!
//! In a position-independent binary (PIE, static-pie, shared library) the address words hold 0
//! in the file and are filled at load time by `R_X86_64_RELATIVE` dynamic relocations, so each
//! word is read through the relocation that targets it (its addend), or from the file bytes
//! when none does.
//!
//! [`RseqElf::tool_metadata_problems`] checks what tools rely on; an empty list means the
//! metadata is consistent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionFlags};

/// One `struct rseq_cs`, relocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Where the descriptor is (its link-time address).
    pub addr: u64,
    /// `version` (always 0).
    pub version: u32,
    /// `flags` (always 0).
    pub flags: u32,
    /// The section's first instruction.
    pub start_ip: u64,
    /// The section's length: its commit is its last instruction.
    pub post_commit_offset: u64,
    /// Where the kernel sends a restarted section.
    pub abort_ip: u64,
}

/// Whether an ELF section's flags include `flag`.
fn has_flag(flags: SectionFlags, flag: object::elf::SectionFlags) -> bool {
    matches!(flags, SectionFlags::Elf { sh_flags, .. } if sh_flags.contains(flag))
}

/// A loaded (`SHF_ALLOC`) section's address range, whether it is executable, and its bytes.
struct Loaded {
    addr: u64,
    size: u64,
    exec: bool,
    data: Vec<u8>,
}

/// The rseq metadata of one ELF file.
pub struct RseqElf {
    /// Every descriptor of `__rseq_cs`, in file order.
    pub descriptors: Vec<Descriptor>,
    /// The entries of `__rseq_cs_ptr_array` (empty when the section is absent).
    pub cs_ptrs: Vec<u64>,
    /// The `(start_ip, exit_ip)` pairs of `__rseq_exit_point_array` (empty when absent).
    pub exit_points: Vec<(u64, u64)>,
    /// Whether the array sections exist at all.
    pub has_ptr_array: bool,
    /// See `has_ptr_array`.
    pub has_exit_point_array: bool,
    /// Whether a symbol named like the library's `inject::LOOPS` is present (a build with the
    /// `inject` feature).
    pub inject_symbol: bool,
    loaded: Vec<Loaded>,
}

impl RseqElf {
    /// Read `path`. Errors are sentences: unreadable file, not ELF, no `__rseq_cs`, a section
    /// whose size is not a whole number of entries.
    pub fn read(path: impl AsRef<std::path::Path>) -> Result<Self, String> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = object::File::parse(&*bytes).map_err(|e| format!("{}: {e}", path.display()))?;

        // Relocated words: address -> addend (R_X86_64_RELATIVE has no symbol).
        let mut relocated = HashMap::new();
        if let Some(relocs) = file.dynamic_relocations() {
            for (at, r) in relocs {
                if matches!(r.target(), RelocationTarget::Absolute | RelocationTarget::Symbol(_)) {
                    relocated.insert(at, r.addend() as u64);
                }
            }
        }
        let section = |name: &str| -> Result<Option<(u64, Vec<u8>)>, String> {
            match file.section_by_name(name) {
                None => Ok(None),
                Some(s) => Ok(Some((s.address(), s.data().map_err(|e| format!("{name}: {e}"))?.to_vec()))),
            }
        };
        // The relocated u64 at `off` of a section that starts at `base`.
        let word = |base: u64, data: &[u8], off: usize| -> u64 {
            relocated
                .get(&(base + off as u64))
                .copied()
                .unwrap_or_else(|| u64::from_le_bytes(data[off..off + 8].try_into().expect("8 bytes")))
        };

        let (cs_addr, cs) = section("__rseq_cs")?.ok_or("no __rseq_cs section (no critical sections?)")?;
        if cs.len() % 32 != 0 {
            return Err(format!("__rseq_cs is {} bytes, not a whole number of 32-byte descriptors", cs.len()));
        }
        let descriptors = (0..cs.len())
            .step_by(32)
            .map(|d| Descriptor {
                addr: cs_addr + d as u64,
                version: u32::from_le_bytes(cs[d..d + 4].try_into().expect("4 bytes")),
                flags: u32::from_le_bytes(cs[d + 4..d + 8].try_into().expect("4 bytes")),
                start_ip: word(cs_addr, &cs, d + 8),
                post_commit_offset: word(cs_addr, &cs, d + 16),
                abort_ip: word(cs_addr, &cs, d + 24),
            })
            .collect();

        let ptrs = section("__rseq_cs_ptr_array")?;
        let cs_ptrs = match &ptrs {
            Some((base, data)) if data.len() % 8 == 0 => {
                (0..data.len()).step_by(8).map(|o| word(*base, data, o)).collect()
            }
            Some((_, data)) => return Err(format!("__rseq_cs_ptr_array is {} bytes, not whole u64s", data.len())),
            None => Vec::new(),
        };
        let exits = section("__rseq_exit_point_array")?;
        let exit_points = match &exits {
            Some((base, data)) if data.len() % 16 == 0 => {
                (0..data.len()).step_by(16).map(|o| (word(*base, data, o), word(*base, data, o + 8))).collect()
            }
            Some((_, data)) => {
                return Err(format!("__rseq_exit_point_array is {} bytes, not whole (u64, u64) pairs", data.len()));
            }
            None => Vec::new(),
        };

        let loaded = file
            .sections()
            .filter(|s| has_flag(s.flags(), object::elf::SHF_ALLOC))
            .map(|s| Loaded {
                addr: s.address(),
                size: s.size(),
                exec: has_flag(s.flags(), object::elf::SHF_EXECINSTR),
                // NOBITS sections (.bss, .tbss) have no bytes.
                data: s.data().map(<[u8]>::to_vec).unwrap_or_default(),
            })
            .collect();
        let inject_symbol = file.symbols().any(|s| s.name().is_ok_and(|n| n.contains("inject") && n.contains("LOOPS")));
        Ok(RseqElf {
            descriptors,
            cs_ptrs,
            exit_points,
            has_ptr_array: ptrs.is_some(),
            has_exit_point_array: exits.is_some(),
            inject_symbol,
            loaded,
        })
    }

    /// `len` bytes of loaded memory at `addr`, when one section holds them all.
    pub fn bytes(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let s = self.loaded.iter().find(|s| s.addr <= addr && addr + len <= s.addr + s.size)?;
        let off = (addr - s.addr) as usize;
        s.data.get(off..off + len as usize)
    }

    /// Whether `addr` lies in an executable section.
    pub fn is_code(&self, addr: u64) -> bool {
        self.loaded.iter().any(|s| s.exec && (s.addr..s.addr + s.size).contains(&addr))
    }

    /// The exit points of each descriptor (by `start_ip`).
    pub fn exits_by_start(&self) -> BTreeMap<u64, Vec<u64>> {
        let mut m: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &(start, exit) in &self.exit_points {
            m.entry(start).or_default().push(exit);
        }
        m
    }

    /// Everything that tools finding our sections could trip over; empty when consistent:
    ///
    /// - every descriptor: version and flags 0, a non-empty section of code, the signature
    ///   (`0x53053053`) in the 4 bytes before an executable `abort_ip`, and a `start_ip` no other
    ///   descriptor has;
    /// - `__rseq_cs_ptr_array`: present, one entry per descriptor, each the address of a
    ///   descriptor (all of them, once each);
    /// - `__rseq_exit_point_array`: present; every pair's `start_ip` is some descriptor's, and
    ///   its `exit_ip` lies in an executable section, outside that descriptor's
    ///   `[start_ip, start_ip + post_commit_offset)`; every descriptor has at least 2 exit points
    ///   (its abort and stopped exits).
    pub fn tool_metadata_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut by_start = HashMap::new();
        for d in &self.descriptors {
            if (d.version, d.flags) != (0, 0) {
                p.push(format!("descriptor {:#x}: version {} flags {}", d.addr, d.version, d.flags));
            }
            let end = d.start_ip.wrapping_add(d.post_commit_offset);
            if d.post_commit_offset == 0 || !self.is_code(d.start_ip) || !self.is_code(end - 1) {
                p.push(format!("descriptor {:#x}: [{:#x}, {end:#x}) is not code", d.addr, d.start_ip));
            }
            if !self.is_code(d.abort_ip) || self.bytes(d.abort_ip - 4, 4) != Some(&0x5305_3053u32.to_le_bytes()[..]) {
                p.push(format!("descriptor {:#x}: no signature before abort_ip {:#x}", d.addr, d.abort_ip));
            }
            if by_start.insert(d.start_ip, d).is_some() {
                p.push(format!("descriptor {:#x}: start_ip {:#x} shared with another descriptor", d.addr, d.start_ip));
            }
        }

        if !self.has_ptr_array {
            p.push("no __rseq_cs_ptr_array section".into());
        }
        if self.cs_ptrs.len() != self.descriptors.len() {
            p.push(format!(
                "__rseq_cs_ptr_array has {} entries for {} descriptors",
                self.cs_ptrs.len(),
                self.descriptors.len()
            ));
        }
        let addrs: BTreeSet<u64> = self.descriptors.iter().map(|d| d.addr).collect();
        let ptrs: BTreeSet<u64> = self.cs_ptrs.iter().copied().collect();
        if ptrs.len() != self.cs_ptrs.len() {
            p.push("__rseq_cs_ptr_array lists a descriptor twice".into());
        }
        for a in ptrs.difference(&addrs) {
            p.push(format!("__rseq_cs_ptr_array entry {a:#x} is not the address of a descriptor"));
        }
        for a in addrs.difference(&ptrs) {
            p.push(format!("descriptor {a:#x} is not in __rseq_cs_ptr_array"));
        }

        if !self.has_exit_point_array {
            p.push("no __rseq_exit_point_array section".into());
        }
        for &(start, exit) in &self.exit_points {
            match by_start.get(&start) {
                None => p.push(format!("exit point ({start:#x}, {exit:#x}): no descriptor starts there")),
                Some(d) => {
                    if (d.start_ip..d.start_ip + d.post_commit_offset).contains(&exit) {
                        p.push(format!("exit point ({start:#x}, {exit:#x}) is inside its section"));
                    }
                    if !self.is_code(exit) {
                        p.push(format!("exit point ({start:#x}, {exit:#x}) is not in an executable section"));
                    }
                }
            }
        }
        let exits = self.exits_by_start();
        for d in &self.descriptors {
            let n = exits.get(&d.start_ip).map_or(0, Vec::len);
            if n < 2 {
                p.push(format!(
                    "descriptor {:#x} (start_ip {:#x}) has {n} exit points, expected at least 2",
                    d.addr, d.start_ip
                ));
            }
        }
        p
    }
}
