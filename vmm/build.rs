//! Compiles the VMM threads' seccomp allow-lists (src/seccomp/rules.rs) to
//! BPF at build time, so starting a VM costs no filter compilation.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[allow(dead_code)]
mod rules {
    include!("src/seccomp/rules.rs");
}

fn compile(list: &[&rules::Allowed]) -> Vec<u8> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for a in list {
        let rules = a
            .arg1
            .iter()
            .map(|&req| {
                let c = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
                    .expect("valid condition");
                SeccompRule::new(vec![c]).expect("valid rule")
            })
            .collect();
        map.insert(a.nr, rules);
    }
    let filter = SeccompFilter::new(
        map,
        // Trapped, so the process can say which call it was before it
        // dies of SIGSYS (seccomp/mod.rs).
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .expect("valid filter");
    let prog: BpfProgram = filter.try_into().expect("compiles to BPF");
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    out
}

fn main() {
    println!("cargo:rerun-if-changed=src/seccomp/rules.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    for (name, list) in [
        ("vcpu", rules::vcpu()),
        ("vmm", rules::vmm()),
        ("vsock", rules::vsock()),
        ("vcpu_shares", rules::vcpu_shares()),
        ("virtiofs", rules::virtiofs()),
    ] {
        std::fs::write(format!("{dir}/{name}.bpf"), compile(&list)).expect("write BPF");
    }
}
