"""What the multi-process (gloo) tests share: a port for the rendezvous and the process
group of one worker process."""
import datetime
import os
import socket

WORLD_SIZE = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def init_gloo_worker(rank: int, port: int, world_size: int = WORLD_SIZE) -> None:
    """The environment torchrun would set, one thread (two CPU cores run all ranks), and
    the gloo group. mmengine's 'pytorch' launcher calls torch.cuda.set_device, which fails
    without a GPU; with the group already up, the Runner uses it as it is."""
    import torch
    import torch.distributed as torch_dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), OMP_NUM_THREADS='1')
    torch.set_num_threads(1)
    torch_dist.init_process_group('gloo', rank=rank, world_size=world_size,
                                  timeout=datetime.timedelta(seconds=120))
