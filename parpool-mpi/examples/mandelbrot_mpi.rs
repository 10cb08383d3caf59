//! The `mandelbrot` batch tool across MPI ranks: the same image, rows spread over every
//! rank of the job, each rank rendering its rows on its own parpool; rank 0 writes the PGM.
//! The program is the same on 1, 2 or 400 ranks:
//!
//! ```text
//! cargo build --release -p parpool-mpi --example mandelbrot_mpi
//! mpirun -np 4 --bind-to none target/release/examples/mandelbrot_mpi -- \
//!     [--width W] [--height H] [--iterations N] [--threads T] [--schedule static|dynamic] \
//!     [--output PATH] [--check]
//! ```
//!
//! (defaults: 1600 × 1200, 500 iterations, all CPUs the rank may use, dynamic,
//! `mandelbrot.pgm`). Rows near the set cost hundreds of times more than rows outside it:
//! the dynamic schedule hands rows out on demand, the static one gives each rank a fixed
//! band. `--check` renders the image again on rank 0 alone and compares.

use std::io::Write;
use std::time::Instant;

use parpool::ThreadPool;
use parpool_mpi::{Cluster, Postcard, Schedule};

struct Options {
    width: usize,
    height: usize,
    iterations: u32,
    threads: usize,
    schedule: Schedule,
    output: String,
    check: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        width: 1600,
        height: 1200,
        iterations: 500,
        threads: std::thread::available_parallelism().map_or(1, usize::from),
        schedule: Schedule::Dynamic,
        output: "mandelbrot.pgm".to_owned(),
        check: false,
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--");
    while let Some(flag) = args.next() {
        if flag == "--check" {
            options.check = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--width" => options.width = number()?,
            "--height" => options.height = number()?,
            "--iterations" => {
                options.iterations = u32::try_from(number()?).map_err(|e| e.to_string())?;
            }
            "--threads" => options.threads = number()?,
            "--schedule" => {
                options.schedule = match value.as_str() {
                    "static" => Schedule::Static,
                    "dynamic" => Schedule::Dynamic,
                    other => return Err(format!("--schedule: {other} is not static or dynamic")),
                };
            }
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

fn main() -> Result<(), String> {
    let options = parse_options()?;
    let universe = mpi::initialize().ok_or("MPI is already initialised")?;
    let pool = ThreadPool::new(options.threads).map_err(|e| e.to_string())?;
    let cluster = Cluster::new(&universe.world(), pool).schedule(options.schedule);

    let start = Instant::now();
    let rows = cluster
        .map_range(Postcard, options.height, |y| render_row(y, &options))
        .map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    // Only rank 0 holds the image.
    let Some(rows) = rows else { return Ok(()) };

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
        "{} ranks x {} threads, {:?} schedule: {elapsed:.2?}",
        cluster.size(),
        options.threads,
        options.schedule
    );
    if options.check {
        let reference: Vec<Vec<u8>> = (0..options.height)
            .map(|y| render_row(y, &options))
            .collect();
        if rows != reference {
            return Err("the image differs from the one rendered on rank 0 alone".to_owned());
        }
        println!("image verified against a render on rank 0 alone");
    }
    Ok(())
}
