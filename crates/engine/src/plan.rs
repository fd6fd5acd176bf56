//! Planning: how many tokens each running sequence feeds the model this step, under one
//! per-step token budget (`max_num_batched_tokens`), as vLLM's chunked-prefill scheduler.
//!
//! Policy:
//! 1. **Decodes first.** Every decoding sequence feeds its one new token before any prefill is
//!    planned, so a long prompt never stalls streams that are already generating.
//! 2. **Prefills share the rest fairly** (water-filling, in batch order): with `m` prefilling
//!    sequences each gets up to an equal share of what is left; one whose remaining prompt is
//!    shorter than its share takes just that, and what it leaves is shared again among the
//!    others; the few tokens an equal split leaves over go one each in batch order.
//!
//! 3. **Long contexts take smaller chunks while others wait on the step.** A chunk's attention
//!    work grows with the context it attends to, so a full-budget chunk deep into a 16k prompt
//!    made one step last seconds, and every other sequence waited for it. When the step is
//!    shared (other sequences running or queued), a prefill past [`FULL_CHUNK_CONTEXT`] tokens
//!    is cut so that chunk × context stays within what a full chunk costs at that context (at
//!    least [`MIN_CHUNK`] tokens, so the prompt still moves). A prompt alone keeps full chunks:
//!    on a large model every extra step re-reads all the weights, and nobody is waiting.
//!    Prompts up to 2k tokens, most chats, are unaffected either way.
//!
//! So a short prompt admitted behind a 40k-token prompt is prefilled whole in its first step
//! instead of after the long one (the first-come-takes-all budget made it wait 245 s), while a
//! prompt alone in the batch still gets the whole budget until its context is long. With `d`
//! decodes and `m` prefills every prefill gets at least `min(⌊(budget − d) / m⌋, its cap)`
//! tokens a step; the engine keeps the budget at least `max_num_seqs`, so `d + m ≤ budget` and
//! every sequence progresses every step.

/// Context up to which a prefill chunk may take the whole budget.
pub(crate) const FULL_CHUNK_CONTEXT: usize = 2048;
/// The smallest chunk the context cap cuts a prefill to.
pub(crate) const MIN_CHUNK: usize = 16;

/// Most tokens a prefill that has `fed` tokens in its cache may feed in one step: the whole
/// budget while the context stays within [`FULL_CHUNK_CONTEXT`], then less, keeping
/// chunk × context near `budget × FULL_CHUNK_CONTEXT`.
pub(crate) fn chunk_cap(fed: usize, budget: usize) -> usize {
    let context = fed.saturating_add(budget).max(FULL_CHUNK_CONTEXT);
    (budget.saturating_mul(FULL_CHUNK_CONTEXT) / context).clamp(MIN_CHUNK.min(budget), budget)
}

/// What a running sequence still has to feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Work {
    /// Tokens not yet fed to the model (the rest of the prompt, or the last sampled token).
    pub left: usize,
    /// Tokens already in its KV cache (the context a new chunk attends to).
    pub fed: usize,
    /// Still in its prompt.
    pub prefilling: bool,
}

/// Tokens to feed per sequence (same order as `work`; 0 = sits this step out). The sum never
/// exceeds `budget`. `queued`: requests are waiting to be admitted, so the step is shared even
/// when `work` holds one sequence.
pub(crate) fn plan(work: &[Work], budget: usize, queued: bool) -> Vec<usize> {
    let mut takes = vec![0; work.len()];
    let shared = queued || work.len() > 1;
    // What each sequence may feed this step: in a shared step, a prefill at most its cap.
    let want: Vec<usize> = work
        .iter()
        .map(|w| match w.prefilling && shared {
            true => w.left.min(chunk_cap(w.fed, budget)),
            false => w.left,
        })
        .collect();
    let mut budget = budget;
    for (take, w) in takes.iter_mut().zip(work) {
        if !w.prefilling {
            *take = w.left.min(budget);
            budget -= *take;
        }
    }
    let mut open: Vec<usize> = (0..work.len())
        .filter(|&i| work[i].prefilling && want[i] > 0)
        .collect();
    while budget > 0 && !open.is_empty() {
        let share = budget / open.len();
        if share == 0 {
            // Fewer tokens than sequences: one each, in batch order.
            for &i in open.iter().take(budget) {
                takes[i] += 1;
            }
            break;
        }
        // Each round either satisfies a sequence (which leaves the round) or hands out all but
        // fewer than `open.len()` tokens, so this ends after at most `open.len() + 1` rounds.
        open.retain(|&i| {
            let give = (want[i] - takes[i]).min(share);
            takes[i] += give;
            budget -= give;
            takes[i] < want[i]
        });
    }
    takes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode() -> Work {
        Work {
            left: 1,
            fed: 0,
            prefilling: false,
        }
    }

    fn prefill(left: usize) -> Work {
        Work {
            left,
            fed: 0,
            prefilling: true,
        }
    }

    #[test]
    fn deep_into_a_long_prompt_shared_steps_stay_short() {
        let budget = 512;
        let mut w = prefill(40_000);
        let mut steps = 0;
        while w.prefilling {
            // Alone, the prompt keeps full chunks; with requests queued, its chunk is cut.
            let alone = plan(&[w], budget, false)[0];
            assert_eq!(
                alone,
                budget.min(w.left),
                "a lone prompt was cut at {}",
                w.fed
            );
            let take = plan(&[w], budget, true)[0];
            // Attention work of the step (chunk × context) stays near a full chunk at 2k.
            let work = take * (w.fed + take);
            assert!(
                take == MIN_CHUNK || work <= budget * (FULL_CHUNK_CONTEXT + budget),
                "{take} tokens at context {}",
                w.fed
            );
            if w.fed + budget <= FULL_CHUNK_CONTEXT {
                assert_eq!(
                    take,
                    budget.min(w.left),
                    "short contexts keep the whole budget"
                );
            }
            assert!(
                take >= MIN_CHUNK.min(w.left),
                "the prompt stalls at {}",
                w.fed
            );
            advance(std::slice::from_mut(&mut w), &[take]);
            steps += 1;
        }
        assert!(steps > 40_000 / budget, "no chunk was cut");
        // A short prompt next to the deep one still gets its whole prompt in one step.
        let deep = Work {
            left: 20_000,
            fed: 20_000,
            prefilling: true,
        };
        let takes = plan(&[deep, prefill(300)], budget, false);
        assert_eq!(takes[1], 300);
        assert!(takes[0] < budget - 300, "{takes:?}");
    }

    #[test]
    fn a_short_prompt_behind_a_long_one_is_prefilled_in_one_step() {
        // The case: a 40,800-token prompt arrived first, then a 2-token one.
        assert_eq!(plan(&[prefill(40_800), prefill(2)], 512, false), [510, 2]);
    }

    #[test]
    fn a_lone_prompt_takes_the_whole_budget() {
        assert_eq!(plan(&[prefill(40_800)], 512, false), [512]);
        assert_eq!(plan(&[prefill(100)], 512, false), [100]);
    }

    #[test]
    fn decodes_go_first_and_prefills_share_the_rest() {
        let takes = plan(
            &[prefill(1000), decode(), prefill(1000), decode()],
            100,
            false,
        );
        assert_eq!(takes, [49, 1, 49, 1]);
        // The leftover of an uneven split goes in batch order.
        let takes = plan(
            &[decode(), prefill(1000), prefill(1000), prefill(1000)],
            12,
            false,
        );
        assert_eq!(takes, [1, 4, 4, 3]);
    }

    #[test]
    fn what_a_short_prefill_leaves_goes_to_the_others() {
        // Shares of 30: the 5-token prompt leaves 25, split between the two long ones.
        let takes = plan(&[prefill(1000), prefill(5), prefill(1000)], 90, false);
        assert_eq!(takes, [43, 5, 42]);
    }

    #[test]
    fn never_exceeds_the_budget_and_uses_it_when_there_is_work() {
        let lens = [1usize, 2, 3, 7, 50, 999, 40_000];
        for budget in [1usize, 2, 7, 16, 64, 512, 2048] {
            for n in 1..=lens.len() {
                let mut work: Vec<Work> = lens[..n].iter().map(|&l| prefill(l)).collect();
                work.insert(0, decode());
                let takes = plan(&work, budget, false);
                let total: usize = takes.iter().sum();
                let demand: usize = work.iter().map(|w| w.left).sum();
                assert_eq!(total, demand.min(budget), "budget {budget}, {n} prompts");
                for (t, w) in takes.iter().zip(&work) {
                    assert!(t <= &w.left);
                }
            }
        }
    }

    #[test]
    fn decodes_that_do_not_fit_sit_out_rather_than_overspend() {
        // The engine keeps the budget at least max_num_seqs so this does not happen; the plan
        // still never spends more than it has.
        assert_eq!(plan(&[decode(), decode(), prefill(5)], 1, false), [1, 0, 0]);
    }

    /// Feeds a plan back into the work, as the scheduler does after a step.
    fn advance(work: &mut [Work], takes: &[usize]) {
        for (w, &t) in work.iter_mut().zip(takes) {
            // A decode feeds its token and samples the next one: its work is unchanged.
            if w.prefilling {
                w.left -= t;
                w.fed += t;
                if w.left == 0 {
                    // Prompt done: the first generated token is next.
                    *w = decode();
                }
            }
        }
    }

    #[test]
    fn a_short_request_behind_long_prefills_is_prefilled_within_a_bounded_number_of_steps() {
        // Four 100k-token prompts and three decodes are running when a 50-token prompt is
        // admitted; the budget is small so the sharing is visible.
        let budget = 64;
        let mut work = vec![
            prefill(100_000),
            decode(),
            prefill(100_000),
            decode(),
            prefill(100_000),
            prefill(100_000),
            decode(),
            prefill(50),
        ];
        let short = work.len() - 1;
        // Every prefill gets at least ⌊(64 − 3) / 5⌋ = 12 tokens a step: ⌈50 / 12⌉ = 5 steps.
        let bound = 50usize.div_ceil((budget - 3) / 5);
        let mut steps = 0;
        while work[short].prefilling {
            let takes = plan(&work, budget, false);
            assert!(takes.iter().sum::<usize>() <= budget);
            for (i, w) in work.iter().enumerate() {
                assert!(takes[i] > 0, "sequence {i} ({w:?}) starved in step {steps}");
            }
            advance(&mut work, &takes);
            steps += 1;
            assert!(
                steps <= bound,
                "short prompt not prefilled after {steps} steps"
            );
        }
        // The long prompts kept going meanwhile.
        for i in [0, 2, 4, 5] {
            assert!(work[i].prefilling && work[i].left < 100_000);
        }
    }
}
