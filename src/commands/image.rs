//! `twinbox image import|ls|rm|inspect|build-base|build-python`.

use anyhow::{Context, Result};
use twinbox_images::{base, layer, oci, python, Reference, Store};

use crate::cli::ImageCommand;
use crate::size;

/// Runs an image command.
pub fn run(store: &Store, cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Import {
            source,
            name,
            max_size,
        } => {
            let name = name.as_deref().map(Reference::parse).transpose()?;
            let max_bytes = size::parse(&max_size).context("--max-size")?;
            let opts = oci::Options {
                name,
                layer: layer::Options {
                    max_bytes,
                    ..layer::Options::default()
                },
            };
            let pb = super::bytes_bar("import");
            let started = std::time::Instant::now();
            let result = oci::import(store, &source, &opts, &pb);
            pb.finish_and_clear();
            let (image, report) =
                result.with_context(|| format!("importing {}", source.display()))?;
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!(
                "imported {} ({} entries, {}) in {:.2}s",
                image.meta.name,
                report.entries,
                size::human(image.meta.size),
                started.elapsed().as_secs_f64()
            );
            println!("{}", image.meta.name);
        }
        ImageCommand::Ls => {
            let images = store.list()?;
            println!("{:<40} {:>10}  {:<22} ID", "NAME", "SIZE", "CREATED");
            for i in images {
                let id = i.meta.id.split(':').nth(1).unwrap_or(&i.meta.id);
                println!(
                    "{:<40} {:>10}  {:<22} {}",
                    i.meta.name,
                    size::human(i.meta.size),
                    i.meta.created.as_deref().unwrap_or(&i.meta.imported),
                    &id[..id.len().min(12)]
                );
            }
        }
        ImageCommand::Rm { names } => {
            for n in names {
                let r = Reference::parse(&n)?;
                store.remove(&r)?;
                println!("{r}");
            }
        }
        ImageCommand::Inspect { name } => {
            let image = store.get(&Reference::parse(&name)?)?;
            let mut v = serde_json::to_value(&image.meta)?;
            v["rootfs"] = serde_json::Value::String(image.rootfs().display().to_string());
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ImageCommand::BuildBase { deb } => {
            let pb = super::spinner("base image");
            pb.set_message(format!("building {} from {}", base::NAME, base::PACKAGE));
            let result = base::build(store, deb.as_deref());
            pb.finish_and_clear();
            let image = result.context("building the base image")?;
            eprintln!(
                "built {} ({}) from {}",
                image.meta.name,
                size::human(image.meta.size),
                image.meta.source
            );
            println!("{}", image.meta.name);
        }
        ImageCommand::BuildPython { debs } => {
            let pb = super::spinner("python image");
            pb.set_message(format!(
                "building {} from {}",
                python::NAME,
                python::PACKAGE
            ));
            let result = python::build(store, debs.as_deref());
            pb.finish_and_clear();
            let image = result.context("building the python image")?;
            eprintln!(
                "built {} ({}) from {}",
                image.meta.name,
                size::human(image.meta.size),
                image.meta.source
            );
            println!("{}", image.meta.name);
        }
    }
    Ok(())
}
