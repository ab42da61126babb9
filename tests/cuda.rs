//! CUDA devices: libtorch's CUDA backend is loaded when libtorch has one, and a device that is
//! not there is an error, not a panic. A test binary of its own: loading the backend registers
//! kernels with libtorch's dispatcher, which must not race other tests' operators.

use blockwise::cuda::{backend_path, check_device, device_count, parse_device};
use blockwise::feature::{FeatureDraft, FeatureDraftConfig};
use blockwise::{Error, Transformer, TransformerConfig};
use tch::Device;

#[test]
fn cuda_devices_are_checked_and_bad_ones_refused() {
    // One test function, so nothing else in this binary runs operators while the backend
    // loads (the first call below loads it).
    let count = device_count();

    // A CUDA build of libtorch (PyTorch's default wheel) has libtorch_cuda.so beside
    // libtorch_cpu.so: then it is loaded, with or without a GPU.
    #[cfg(target_os = "linux")]
    {
        let cpu = std::fs::read_to_string("/proc/self/maps").unwrap();
        let dir = cpu
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.ends_with("/libtorch_cpu.so"))
            .map(|p| std::path::Path::new(p).parent().unwrap().to_path_buf())
            .expect("libtorch_cpu.so is mapped");
        assert_eq!(
            backend_path().is_some(),
            dir.join("libtorch_cuda.so").is_file(),
            "{}",
            dir.display()
        );
    }

    // One past the devices libtorch sees: an error on every machine, with or without a GPU.
    let e = check_device(Device::Cuda(count)).unwrap_err().to_string();
    assert!(e.contains("device"), "{e}");
    if count == 0 {
        assert!(e.contains("no CUDA"), "{e}");
    } else {
        assert!(e.contains(&format!("sees {count} CUDA")), "{e}");
    }
    let missing = Device::Cuda(count);
    let e = Transformer::new_seeded(TransformerConfig::tiny(20, 1), 1, missing).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "device",
                ..
            }
        ),
        "{e}"
    );
    let e = FeatureDraft::new(FeatureDraftConfig::for_base(16, 20), 1, missing).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "device",
                ..
            }
        ),
        "{e}"
    );

    // The command lines' names.
    for bad in ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1", ""] {
        let e = parse_device(bad).unwrap_err().to_string();
        assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
    }
    for text in ["cuda", "cuda:0"] {
        match parse_device(text) {
            Ok(d) => assert_eq!((d, count > 0), (Device::Cuda(0), true)),
            Err(e) => assert_eq!((e.to_string().contains("device"), count), (true, 0)),
        }
    }
}
