//! `map` on a few threads: the CPU work the tablet and the server both do
//! per record (opening, checking, merging automerge documents), shared by
//! `crvs-core` and `crvs-server`.

/// At most this many threads.
pub const MAX_WORKERS: usize = 4;

/// `f` over `items` on up to [`MAX_WORKERS`] threads (as many as the
/// machine has cores), results in order. Fewer than `from` items stay on
/// this thread. `Err` carries the payload of a worker's panic.
pub fn map<T: Send, R: Send>(
    items: Vec<T>,
    from: usize,
    f: impl Fn(T) -> R + Sync,
) -> std::thread::Result<Vec<R>> {
    // Asked once: on Linux it reads the cgroup files every time.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let workers =
        (*CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))).min(MAX_WORKERS);
    if workers < 2 || items.len() < from {
        return Ok(items.into_iter().map(f).collect());
    }
    let chunk = items.len().div_ceil(workers);
    let mut items = items;
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(workers);
    while !items.is_empty() {
        let rest = items.split_off(chunk.min(items.len()));
        chunks.push(std::mem::replace(&mut items, rest));
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| s.spawn(move || c.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(h.join()?);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_and_a_workers_panic_comes_back_as_an_error() {
        let items: Vec<u32> = (0..1000).collect();
        let doubled: Vec<u32> = items.iter().map(|i| i * 2).collect();
        assert_eq!(map(items.clone(), 8, |i| i * 2).unwrap(), doubled);
        assert_eq!(
            map(vec![1, 2, 3], 8, |i| i + 1).unwrap(),
            vec![2, 3, 4],
            "a few stay here"
        );
        assert!(map(items, 8, |i| if i == 700 { panic!("worker") } else { i }).is_err());
    }
}
