//! The null guest: the smallest thing a VMM can boot, to measure the
//! monitor alone (VM creation, memory, vCPU start, exits), with no Linux.
//!
//! [`elf`] writes a 64-bit ELF executable whose code is loaded at 1 MiB. The
//! instructions chosen encode the same in 32-bit protected mode and 64-bit
//! long mode, so the same file works whichever way a VMM enters it:
//!
//! 1. `out 0x502, 1` - boot timer mark 1 (the guest's first instruction);
//! 2. writes the marker [`MARKER`] to the serial port 0x3f8, byte by byte;
//! 3. then, by [`Program`]: writes an exit code to port 0x501 and pulses
//!    the i8042 reset line (for VMMs without our exit port), spins forever,
//!    or executes `ud2` with no IDT, which triple-faults.

/// What the null guest prints first.
pub const MARKER: &str = "twinbox null guest\n";

/// Where the code is loaded and entered.
pub const LOAD_ADDR: u64 = 0x10_0000;

/// What the null guest does after its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// Exit with this code (exit port), then reset (i8042).
    Exit(u32),
    /// Loop forever.
    Spin,
    /// Halt forever with interrupts off: an idle VM that costs no CPU (the
    /// vCPU blocks in KVM_RUN).
    Idle,
    /// Triple-fault.
    TripleFault,
    /// Program the I/O APIC (pin 0: vector 0x31, unmasked), read the entry
    /// back, write garbage to it (a register past the last entry, an
    /// offset outside its registers), and exit with the low byte read
    /// back: 0x31 from a working I/O APIC.
    Ioapic,
    /// Set EBX to 40, write the ready mark (3) to the boot timer port,
    /// add 2 to EBX and exit with it: 42 from a guest restored from a
    /// snapshot taken at the mark (its registers came back), and
    ReadyThenExit,
}

fn mov_dx(code: &mut Vec<u8>, port: u16) {
    code.extend_from_slice(&[0x66, 0xba]);
    code.extend_from_slice(&port.to_le_bytes());
}

/// The machine code of `program`.
pub fn code(program: Program) -> Vec<u8> {
    let mut c = Vec::new();
    mov_dx(&mut c, 0x502);
    c.extend_from_slice(&[0xb0, 0x01, 0xee]); // mov al, 1; out dx, al
    mov_dx(&mut c, 0x3f8);
    for b in MARKER.bytes() {
        c.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    match program {
        Program::Exit(status) => {
            mov_dx(&mut c, 0x501);
            c.push(0xb8); // mov eax, status
            c.extend_from_slice(&status.to_le_bytes());
            c.push(0xef); // out dx, eax
            mov_dx(&mut c, 0x64);
            c.extend_from_slice(&[0xb0, 0xfe, 0xee]); // mov al, 0xfe; out dx, al
            c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
        }
        Program::ReadyThenExit => {
            c.extend_from_slice(&[0xbb, 40, 0, 0, 0]); // mov ebx, 40
            mov_dx(&mut c, 0x502);
            c.extend_from_slice(&[0xb0, 0x03, 0xee]); // mov al, 3; out dx, al
            c.extend_from_slice(&[0x83, 0xc3, 0x02]); // add ebx, 2
            c.extend_from_slice(&[0x89, 0xd8]); // mov eax, ebx
            mov_dx(&mut c, 0x501);
            c.push(0xef); // out dx, eax
            mov_dx(&mut c, 0x64);
            c.extend_from_slice(&[0xb0, 0xfe, 0xee]); // mov al, 0xfe; out dx, al
            c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
        }
        Program::Spin => c.extend_from_slice(&[0xeb, 0xfe]), // jmp $
        Program::Idle => c.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]), // cli; hlt; jmp hlt
        Program::TripleFault => c.extend_from_slice(&[0x0f, 0x0b]), // ud2
        Program::Ioapic => {
            c.extend_from_slice(&[0xbf, 0x00, 0x00, 0xc0, 0xfe]); // mov edi, 0xfec00000
            c.extend_from_slice(&[0xc7, 0x07, 0x10, 0, 0, 0]); // mov dword [rdi], 0x10
            c.extend_from_slice(&[0xc7, 0x47, 0x10, 0x31, 0, 0, 0]); // mov dword [rdi+0x10], 0x31
            c.extend_from_slice(&[0x8b, 0x47, 0x10]); // mov eax, [rdi+0x10]
            c.extend_from_slice(&[0xc7, 0x07, 0xff, 0xff, 0xff, 0xff]); // mov dword [rdi], -1
            c.extend_from_slice(&[0xc7, 0x47, 0x10, 0xef, 0xbe, 0xad, 0xde]); // [rdi+0x10] = 0xdeadbeef
                                                                              // mov dword [rdi+0x800], 0x12345678
            c.extend_from_slice(&[0xc7, 0x87, 0x00, 0x08, 0, 0, 0x78, 0x56, 0x34, 0x12]);
            mov_dx(&mut c, 0x501);
            c.push(0xef); // out dx, eax
            mov_dx(&mut c, 0x64);
            c.extend_from_slice(&[0xb0, 0xfe, 0xee]); // mov al, 0xfe; out dx, al
            c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
        }
    }
    c
}

/// Offset of the code in the ELF file.
const CODE_OFFSET: u64 = 0x100;

/// A 64-bit x86 ELF executable of `program`: one loadable segment at
/// [`LOAD_ADDR`], and a PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`) naming the
/// same address as the 32-bit entry, which is how QEMU boots an ELF kernel.
pub fn elf(program: Program) -> Vec<u8> {
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    const NOTE_OFFSET: u64 = EHDR + 2 * PHDR;
    let code = code(program);
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());

    let mut f = Vec::with_capacity(CODE_OFFSET as usize + code.len());
    // ELF header.
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
    f.extend_from_slice(&[0u8; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&EHDR.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&[0u8; 6]); // e_shentsize, e_shnum, e_shstrndx
    let phdr =
        |f: &mut Vec<u8>, kind: u32, flags: u32, offset: u64, addr: u64, size: u64, align: u64| {
            f.extend_from_slice(&kind.to_le_bytes());
            f.extend_from_slice(&flags.to_le_bytes());
            f.extend_from_slice(&offset.to_le_bytes());
            f.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
            f.extend_from_slice(&addr.to_le_bytes()); // p_paddr
            f.extend_from_slice(&size.to_le_bytes()); // p_filesz
            f.extend_from_slice(&size.to_le_bytes()); // p_memsz
            f.extend_from_slice(&align.to_le_bytes());
        };
    phdr(&mut f, 1, 5, CODE_OFFSET, LOAD_ADDR, code.len() as u64, 16); // PT_LOAD, R+X
    phdr(&mut f, 4, 4, NOTE_OFFSET, 0, note.len() as u64, 4); // PT_NOTE
    f.extend_from_slice(&note);
    f.resize(CODE_OFFSET as usize, 0);
    f.extend_from_slice(&code);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_header_is_well_formed() {
        let f = elf(Program::Exit(7));
        assert_eq!(&f[..4], b"\x7fELF");
        assert_eq!(f[4], 2);
        assert_eq!(
            u64::from_le_bytes(f[24..32].try_into().unwrap_or_default()),
            LOAD_ADDR
        );
        let code = code(Program::Exit(7));
        assert_eq!(&f[CODE_OFFSET as usize..], &code[..]);
        // The PVH note names the load address.
        let note_at = f.windows(4).position(|w| w == b"Xen\0").unwrap_or(0);
        assert_eq!(
            &f[note_at + 4..note_at + 8],
            &(LOAD_ADDR as u32).to_le_bytes()
        );
        // The exit code is in the `mov eax` immediate.
        assert!(code.windows(5).any(|w| w == [0xb8, 7, 0, 0, 0]));
    }
}
