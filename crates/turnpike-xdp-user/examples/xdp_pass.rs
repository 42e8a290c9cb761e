//! Attaches `turnpike_pass` (XDP_PASS for every frame) to the interfaces given and keeps it there
//! until the process is stopped. A veth drops what the other end sends with XDP_TX unless this
//! end runs an XDP program too; the namespace tests and benchmarks run this on the router-side
//! ends.
//!
//!     xdp_pass ELF INTERFACE...

use std::error::Error;
use std::time::Duration;

use turnpike_xdp_user::{AttachMode, LoadOptions, Program, XdpRelay};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let elf = args.next().ok_or("usage: xdp_pass ELF INTERFACE...")?;
    let interfaces: Vec<String> = args.collect();
    if interfaces.is_empty() {
        return Err("usage: xdp_pass ELF INTERFACE...".into());
    }
    let mut object = XdpRelay::load(&elf, &LoadOptions::default())?;
    for interface in &interfaces {
        object.attach_program(Program::Pass, interface, AttachMode::Driver)?;
    }
    println!("turnpike_pass attached to {}", interfaces.join(", "));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
