//! A seccomp filter given at run time (an OCI runtime's `linux.seccomp`,
//! already translated from names to numbers), compiled to classic BPF.
//!
//! The default profile (`profile.rs`) is assembled at build time; a
//! bundle's profile only exists once its `config.json` is read, so it is
//! compiled here, in the parent, before the box's process is cloned (the
//! child only hands the finished program to the kernel).
//!
//! Layout of the program: the architecture check (anything but x86_64,
//! and the x32 ABI's numbers, get the default action: the rules name
//! x86_64 calls only); then one block per system call number, in the
//! order its first rule came: `if nr == N { rules }`; the default action
//! last. Within a block, rules with argument comparisons come first, in
//! order, each returning its action when all its comparisons hold (they
//! are ANDed, as in libseccomp); then the first rule without comparisons,
//! or the default action. Comparisons are on the full 64-bit argument:
//! the high word, then the low one.

use nix::errno::Errno;

/// Errors of compiling a filter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// An argument index past the six a system call has.
    #[error("seccomp: argument index {0} (a system call has arguments 0 to 5)")]
    ArgIndex(u32),
    /// One system call's rules need more than a BPF jump can cross.
    #[error("seccomp: the rules for system call {0} are too long for one BPF block")]
    BlockTooLong(u32),
    /// The program is longer than the kernel takes.
    #[error("seccomp: the filter needs {0} BPF instructions, more than the kernel's 4096")]
    TooLong(usize),
}

/// What a rule (or the default) does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let it through.
    Allow,
    /// Fail it with this errno.
    Errno(u16),
    /// Kill the calling thread.
    KillThread,
    /// Kill the whole process.
    KillProcess,
    /// Send SIGSYS.
    Trap,
    /// Let it through and log it.
    Log,
    /// Stop for a ptrace tracer, with this value (ENOSYS without one).
    Trace(u16),
}

impl Action {
    /// The value the filter returns for it.
    pub fn ret(self) -> u32 {
        match self {
            Self::Allow => 0x7fff_0000,
            Self::Errno(e) => 0x0005_0000 | u32::from(e),
            Self::KillThread => 0,
            Self::KillProcess => 0x8000_0000,
            Self::Trap => 0x0003_0000,
            Self::Log => 0x7ffc_0000,
            Self::Trace(v) => 0x7ff0_0000 | u32::from(v),
        }
    }
}

/// How an argument is compared with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `arg == value`.
    Eq,
    /// `arg != value`.
    Ne,
    /// `arg < value` (unsigned).
    Lt,
    /// `arg <= value`.
    Le,
    /// `arg > value`.
    Gt,
    /// `arg >= value`.
    Ge,
    /// `arg & mask == value`.
    MaskedEq(u64),
}

/// One comparison of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCmp {
    /// Which argument, 0 to 5.
    pub index: u32,
    /// The value compared with.
    pub value: u64,
    /// How.
    pub op: Op,
}

/// One rule: a system call number, its comparisons (all must hold), and
/// the action then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The x86_64 system call number.
    pub nr: u32,
    /// Comparisons, ANDed; empty: the rule always applies.
    pub args: Vec<ArgCmp>,
    /// What happens.
    pub action: Action,
}

/// A whole filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// For calls no rule matches.
    pub default: Action,
    /// The rules, in the profile's order.
    pub rules: Vec<Rule>,
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const MAX_INSNS: usize = 4096;

/// A jump inside a rule: forward by a fixed count, or to the next rule.
#[derive(Clone, Copy)]
enum J {
    Rel(u8),
    Fail,
}

struct Ins(u16, J, J, u32);

fn ld(off: u32) -> Ins {
    Ins(LD_W_ABS, J::Rel(0), J::Rel(0), off)
}

/// The instructions of one comparison: falling off the end is a match,
/// `J::Fail` a mismatch.
fn compare(c: &ArgCmp) -> Vec<Ins> {
    let lo_off = 16 + 8 * c.index;
    let hi_off = lo_off + 4;
    let (hv, lv) = ((c.value >> 32) as u32, c.value as u32);
    let (z, f) = (J::Rel(0), J::Fail);
    match c.op {
        Op::Eq => vec![
            ld(hi_off),
            Ins(JEQ_K, z, f, hv),
            ld(lo_off),
            Ins(JEQ_K, z, f, lv),
        ],
        Op::Ne => vec![
            ld(hi_off),
            Ins(JEQ_K, z, J::Rel(2), hv),
            ld(lo_off),
            Ins(JEQ_K, f, z, lv),
        ],
        Op::Gt | Op::Ge => vec![
            ld(hi_off),
            Ins(JGT_K, J::Rel(3), z, hv),
            Ins(JEQ_K, z, f, hv),
            ld(lo_off),
            Ins(if c.op == Op::Gt { JGT_K } else { JGE_K }, z, f, lv),
        ],
        Op::Lt | Op::Le => vec![
            ld(hi_off),
            Ins(JGE_K, z, J::Rel(3), hv),
            Ins(JEQ_K, z, f, hv),
            ld(lo_off),
            Ins(if c.op == Op::Lt { JGE_K } else { JGT_K }, f, z, lv),
        ],
        Op::MaskedEq(mask) => {
            let (hm, lm) = ((mask >> 32) as u32, mask as u32);
            vec![
                ld(hi_off),
                Ins(AND_K, z, z, hm),
                Ins(JEQ_K, z, f, hv & hm),
                ld(lo_off),
                Ins(AND_K, z, z, lm),
                Ins(JEQ_K, z, f, lv & lm),
            ]
        }
    }
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The block of one system call number: its conditional rules, then its
/// unconditional one (or the default).
fn block(nr: u32, rules: &[&Rule], default: Action) -> Result<Vec<libc::sock_filter>, Error> {
    let mut out = Vec::new();
    for r in rules.iter().filter(|r| !r.args.is_empty()) {
        let mut body: Vec<Ins> = Vec::new();
        for c in &r.args {
            if c.index > 5 {
                return Err(Error::ArgIndex(c.index));
            }
            body.extend(compare(c));
        }
        body.push(Ins(RET_K, J::Rel(0), J::Rel(0), r.action.ret()));
        let end = body.len();
        for (i, Ins(code, jt, jf, k)) in body.into_iter().enumerate() {
            let resolve = |j: J| match j {
                J::Rel(n) => Ok(n),
                J::Fail => u8::try_from(end - (i + 1)).map_err(|_| Error::BlockTooLong(nr)),
            };
            out.push(insn(code, resolve(jt)?, resolve(jf)?, k));
        }
    }
    let last = rules
        .iter()
        .find(|r| r.args.is_empty())
        .map_or(default, |r| r.action);
    out.push(insn(RET_K, 0, 0, last.ret()));
    Ok(out)
}

/// Compiles `f` to a BPF program.
pub fn compile(f: &Filter) -> Result<Vec<libc::sock_filter>, Error> {
    let def = f.default.ret();
    let mut p = vec![
        insn(LD_W_ABS, 0, 0, 4),
        insn(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(RET_K, 0, 0, def),
        insn(LD_W_ABS, 0, 0, 0),
        insn(JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, def),
    ];
    let mut order: Vec<u32> = Vec::new();
    for r in &f.rules {
        if !order.contains(&r.nr) {
            order.push(r.nr);
        }
    }
    for nr in order {
        let rules: Vec<&Rule> = f.rules.iter().filter(|r| r.nr == nr).collect();
        let b = block(nr, &rules, f.default)?;
        let skip = u8::try_from(b.len()).map_err(|_| Error::BlockTooLong(nr))?;
        p.push(insn(JEQ_K, 0, skip, nr));
        p.extend(b);
    }
    p.push(insn(RET_K, 0, 0, def));
    if p.len() > MAX_INSNS {
        return Err(Error::TooLong(p.len()));
    }
    Ok(p)
}

/// Installs `prog` on the calling thread (needs `no_new_privs` or
/// `CAP_SYS_ADMIN`). System calls only: safe between clone and execve.
pub fn install(prog: &[libc::sock_filter]) -> Result<(), Errno> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies the program, valid for the call; the
    // filter pointer is only read despite its type.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prog` over one `seccomp_data` (a BPF interpreter of the
    /// instructions `compile` emits), so every comparison is checked
    /// without installing anything.
    fn eval(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            let jump = |cond: bool| if cond { i.jt as usize } else { i.jf as usize };
            match i.code {
                LD_W_ABS => {
                    let o = i.k as usize;
                    acc = u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
                }
                AND_K => acc &= i.k,
                JEQ_K => pc += jump(acc == i.k),
                JGT_K => pc += jump(acc > i.k),
                JGE_K => pc += jump(acc >= i.k),
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn filter(rules: Vec<Rule>) -> Vec<libc::sock_filter> {
        compile(&Filter {
            default: Action::Errno(1),
            rules,
        })
        .expect("compiles")
    }

    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = 0x0005_0001;

    #[test]
    fn allows_listed_calls_and_defaults_the_rest() {
        let p = filter(vec![
            Rule {
                nr: 0,
                args: vec![],
                action: Action::Allow,
            },
            Rule {
                nr: 435,
                args: vec![],
                action: Action::Errno(38),
            },
        ]);
        assert_eq!(eval(&p, AUDIT_ARCH_X86_64, 0, [0; 6]), ALLOW);
        assert_eq!(eval(&p, AUDIT_ARCH_X86_64, 435, [0; 6]), 0x0005_0026);
        assert_eq!(eval(&p, AUDIT_ARCH_X86_64, 1, [0; 6]), EPERM);
        assert_eq!(
            eval(&p, 0x4000_0003, 0, [0; 6]),
            EPERM,
            "i386 gets the default"
        );
        assert_eq!(
            eval(&p, AUDIT_ARCH_X86_64, 0x4000_0000, [0; 6]),
            EPERM,
            "x32"
        );
    }

    #[test]
    fn compares_64_bit_arguments() {
        let values = [
            0u64,
            1,
            7,
            8,
            9,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0008,
            u64::MAX,
        ];
        let ops = [
            (Op::Eq, (|a, v| a == v) as fn(u64, u64) -> bool),
            (Op::Ne, |a, v| a != v),
            (Op::Lt, |a, v| a < v),
            (Op::Le, |a, v| a <= v),
            (Op::Gt, |a, v| a > v),
            (Op::Ge, |a, v| a >= v),
        ];
        for (op, want) in ops {
            for &v in &values {
                let p = filter(vec![Rule {
                    nr: 135,
                    args: vec![ArgCmp {
                        index: 2,
                        value: v,
                        op,
                    }],
                    action: Action::Allow,
                }]);
                for &a in &values {
                    let mut args = [0u64; 6];
                    args[2] = a;
                    let got = eval(&p, AUDIT_ARCH_X86_64, 135, args) == ALLOW;
                    assert_eq!(got, want(a, v), "{op:?} arg {a:#x} value {v:#x}");
                }
            }
        }
    }

    #[test]
    fn masked_eq_and_anded_comparisons_and_ored_rules() {
        // Docker's clone rule: no namespace flags.
        let ns = 2_114_060_288u64;
        let p = filter(vec![
            Rule {
                nr: 56,
                args: vec![ArgCmp {
                    index: 0,
                    value: 0,
                    op: Op::MaskedEq(ns),
                }],
                action: Action::Allow,
            },
            Rule {
                nr: 135,
                args: vec![
                    ArgCmp {
                        index: 0,
                        value: 8,
                        op: Op::Ge,
                    },
                    ArgCmp {
                        index: 1,
                        value: 3,
                        op: Op::Eq,
                    },
                ],
                action: Action::Allow,
            },
            Rule {
                nr: 135,
                args: vec![ArgCmp {
                    index: 0,
                    value: 0,
                    op: Op::Eq,
                }],
                action: Action::Allow,
            },
        ]);
        let run = |nr, a0, a1| eval(&p, AUDIT_ARCH_X86_64, nr, [a0, a1, 0, 0, 0, 0]);
        assert_eq!(run(56, 0x0001_1200, 0), ALLOW, "fork-like clone");
        assert_eq!(run(56, 0x1000_0000, 0), EPERM, "CLONE_NEWUSER");
        assert_eq!(run(135, 9, 3), ALLOW);
        assert_eq!(run(135, 9, 4), EPERM, "second comparison fails");
        assert_eq!(run(135, 0, 4), ALLOW, "the other rule");
        assert_eq!(run(135, 1, 3), EPERM);
    }

    #[test]
    fn refuses_what_it_cannot_compile() {
        let bad = Filter {
            default: Action::Allow,
            rules: vec![Rule {
                nr: 1,
                args: vec![ArgCmp {
                    index: 6,
                    value: 0,
                    op: Op::Eq,
                }],
                action: Action::KillProcess,
            }],
        };
        assert_eq!(compile(&bad), Err(Error::ArgIndex(6)));
        let long = Filter {
            default: Action::Allow,
            rules: (0..2100)
                .map(|nr| Rule {
                    nr,
                    args: vec![],
                    action: Action::Log,
                })
                .collect(),
        };
        assert!(matches!(compile(&long), Err(Error::TooLong(_))));
    }
}
