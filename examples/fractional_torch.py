"""A fractional-GPU job with PyTorch: a matrix multiply on a quarter of one device.

    python examples/fractional_torch.py

The job reports what it found and degrades clearly: without torch in the image it says so (and you can add
``requirements=["torch"]`` when the workers can reach an index), without a CUDA device it runs on the CPU and
says that too. Inside the job the runner has already limited torch to the granted share
(``torch.cuda.set_per_process_memory_fraction``) when a GPU is there.
"""

import os

import cumulus


@cumulus.remote(gpu=0.25, duration=600)
def matmul(n: int = 1024) -> dict:
    found = {
        "partition": os.environ.get("CUMULUS_PARTITION_ID", "-"),
        "device_index": os.environ.get("CUMULUS_DEVICE_INDEX", "-"),
        "gpu_fraction": os.environ.get("CUMULUS_GPU_FRACTION", "-"),
    }
    try:
        import torch
    except ImportError:
        print("torch is not installed in the job's environment; "
              "submit with requirements=['torch'] to install it (needs a package index)")
        return {**found, "torch": None, "device": None, "result": None}
    if torch.cuda.is_available():
        device = torch.device("cuda", 0)
        name = torch.cuda.get_device_name(device)
        total = torch.cuda.get_device_properties(device).total_memory
        print(f"CUDA device: {name}, {total / 2**30:.1f} GiB, our share {found['gpu_fraction']}")
    else:
        device = torch.device("cpu")
        name = "cpu"
        print("no CUDA device visible to the job: running on the CPU instead")
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    checksum = float((a @ b).sum().item())
    return {**found, "torch": torch.__version__, "device": name, "result": checksum}


if __name__ == "__main__":
    try:
        report = cumulus.get(matmul.remote(512))
    except cumulus.RemoteError as error:
        print(f"the job failed remotely: {error}")
        raise SystemExit(1)
    for key, value in report.items():
        print(f"{key:>13}: {value}")
