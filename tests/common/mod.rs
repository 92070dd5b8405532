//! Helpers for the end-to-end tests: run the `twinbox` binary against a
//! private store and cache, and check what a run left behind.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A private twinbox home (store) and cache for one test.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Runs twinbox with `args`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_twinbox"))
            .args(args)
            .env("TWINBOX_HOME", self.home())
            .env("TWINBOX_CACHE", self.cache())
            .output()
            .expect("run twinbox")
    }
    /// Names of the images in the store.
    pub fn images(&self) -> Vec<String> {
        let dir = self.home().join("images");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
    /// Entries left in the store's staging area.
    pub fn leftovers(&self) -> usize {
        std::fs::read_dir(self.home().join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}
