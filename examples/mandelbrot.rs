//! A numeric batch tool: renders the Mandelbrot set to a PGM image, rows in parallel with
//! `par_map` on its own pool (`install`), and prints the time and the speed-up over one
//! thread. Run with `cargo run --release --example mandelbrot -- [--width W] [--height H]
//! [--iterations N] [--threads T] [--output PATH]` (defaults: 1600 × 1200, 500 iterations,
//! all CPUs, `mandelbrot.pgm`).
//!
//! Rows near the set's interior cost hundreds of times more than rows outside it: the
//! skewed load that a static split handles badly and `par_map`'s splitting on demand
//! balances.
//!
//! With `--features indicatif` the parallel render draws a progress bar on standard error
//! (a `Progress` given to a `Watch`; nothing is drawn when standard error is not a
//! terminal).

use std::io::Write;
use std::time::Instant;

use parpool::prelude::*;
use parpool::{Progress, Watch};

struct Options {
    width: usize,
    height: usize,
    iterations: u32,
    threads: usize,
    output: String,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        width: 1600,
        height: 1200,
        iterations: 500,
        threads: std::thread::available_parallelism().map_or(1, usize::from),
        output: "mandelbrot.pgm".to_owned(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--width" => options.width = number()?,
            "--height" => options.height = number()?,
            "--iterations" => {
                options.iterations = u32::try_from(number()?).map_err(|e| e.to_string())?;
            }
            "--threads" => options.threads = number()?,
            "--output" => options.output = value,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if options.width == 0 || options.height == 0 || options.iterations == 0 {
        return Err("width, height and iterations must be positive".to_owned());
    }
    Ok(options)
}

/// The grey level of one pixel: how fast the point escapes (0 = inside the set).
fn pixel(x: usize, y: usize, options: &Options) -> u8 {
    let cx = -2.2 + 3.0 * x as f64 / options.width as f64;
    let cy = -1.2 + 2.4 * y as f64 / options.height as f64;
    let (mut zx, mut zy) = (0.0f64, 0.0f64);
    for i in 0..options.iterations {
        if zx * zx + zy * zy > 4.0 {
            return (255 - (i * 255 / options.iterations)) as u8;
        }
        (zx, zy) = (zx * zx - zy * zy + cx, 2.0 * zx * zy + cy);
    }
    0
}

fn render_row(y: usize, options: &Options) -> Vec<u8> {
    (0..options.width).map(|x| pixel(x, y, options)).collect()
}

/// A progress bar on standard error with the `indicatif` feature, a plain count without.
fn progress() -> Progress {
    #[cfg(feature = "indicatif")]
    let progress = Progress::bar();
    #[cfg(not(feature = "indicatif"))]
    let progress = Progress::new();
    progress
}

fn main() -> Result<(), String> {
    let options = parse_options()?;
    let pool = ThreadPool::new(options.threads).map_err(|e| e.to_string())?;
    let single = ThreadPool::new(1).map_err(|e| e.to_string())?;

    let start = Instant::now();
    let progress = progress();
    let watch = Watch::new().progress(&progress);
    let rows: Vec<Vec<u8>> = pool
        .install(|| watch.run(|| (0..options.height).par_map(|y| render_row(y, &options))))
        .map_err(|stopped| stopped.to_string())?;
    let parallel = start.elapsed();

    let start = Instant::now();
    let reference: Vec<Vec<u8>> =
        single.install(|| (0..options.height).par_map(|y| render_row(y, &options)));
    let one_thread = start.elapsed();
    if rows != reference {
        return Err("the parallel image differs from the one-thread image".to_owned());
    }

    let mut file = std::fs::File::create(&options.output).map_err(|e| e.to_string())?;
    write!(file, "P5\n{} {}\n255\n", options.width, options.height).map_err(|e| e.to_string())?;
    for row in &rows {
        file.write_all(row).map_err(|e| e.to_string())?;
    }
    let inside = rows.iter().flatten().filter(|&&p| p == 0).count();
    println!(
        "rendered {}x{} ({} iterations) to {}: {:.1}% of pixels inside the set",
        options.width,
        options.height,
        options.iterations,
        options.output,
        100.0 * inside as f64 / (options.width * options.height) as f64
    );
    println!(
        "{} threads: {parallel:.2?}; 1 thread: {one_thread:.2?}; speed-up {:.2}x",
        options.threads,
        one_thread.as_secs_f64() / parallel.as_secs_f64()
    );
    Ok(())
}
