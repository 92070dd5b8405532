//! Assembles the box's default seccomp profile (src/seccomp/profile.rs) to
//! BPF at build time and writes it as a Rust constant, so a start costs no
//! filter compilation.

#[allow(dead_code)]
mod profile {
    include!("src/seccomp/profile.rs");
}

#[allow(dead_code)]
mod bpf {
    include!("src/seccomp/bpf.rs");
}

fn main() {
    println!("cargo:rerun-if-changed=src/seccomp/profile.rs");
    println!("cargo:rerun-if-changed=src/seccomp/bpf.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let denied: Vec<(i64, i32)> = profile::DENIED.iter().map(|d| (d.nr, d.errno)).collect();
    let prog = bpf::assemble(
        &denied,
        libc::SYS_clone,
        profile::CLONE_NAMESPACE_FLAGS,
        libc::SYS_ioctl,
        profile::TIOCSTI,
    );
    let mut src = format!(
        "/// The default profile as BPF, assembled by build.rs.\npub static PROGRAM: [libc::sock_filter; {}] = [\n",
        prog.len()
    );
    for (code, jt, jf, k) in prog {
        src.push_str(&format!(
            "    libc::sock_filter {{ code: {code:#x}, jt: {jt}, jf: {jf}, k: {k:#x} }},\n"
        ));
    }
    src.push_str("];\n");
    let dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(format!("{dir}/seccomp_profile.rs"), src).expect("write the profile");
}
