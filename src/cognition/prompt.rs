//! Prompts for the model backends: the templates under `config/prompts/`
//! that are offered as capabilities (`iteration.md` is `claude-edit`, any
//! other `<name>.md` is `claude-<name>`), and the assembly of a prompt under
//! a token budget. Context comes in items, each with a relevance; when the
//! rendered prompt is over the budget the least relevant item goes first,
//! and only when nothing is left to drop is the text cut.
//!
//! Tokens are estimated, not counted: Claude's tokenizer is not published
//! and no crate carries it. The estimate is made to err high: a run of
//! ASCII letters and digits counts one token per four characters (rounded
//! up), every other visible character and every line break one token, and
//! spaces nothing. BPE tokenizers merge common words whole, so real counts
//! come out lower (`docs/ARCHITECTURE.md` says by how much on our prompts).

use std::collections::BTreeMap;
use std::path::Path;

use crate::domain::Capability;

/// Where templates are looked for, from the directory the agent runs in.
pub const PROMPTS_DIR: &str = "config/prompts";
/// The template of `claude-edit`, the one every model backend has.
pub const DEFAULT_TEMPLATE: &str = "iteration";
/// The templates this build carries, used where `config/prompts/` lacks them.
const EMBEDDED: [(&str, &str); 3] = [
    (
        "iteration",
        include_str!("../../config/prompts/iteration.md"),
    ),
    (
        "fix-warning",
        include_str!("../../config/prompts/fix-warning.md"),
    ),
    ("add-test", include_str!("../../config/prompts/add-test.md")),
];

/// One prompt template, offered as a capability.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub text: String,
}

/// The templates offered, by capability id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prompts {
    templates: BTreeMap<String, Template>,
}

/// The capability a template is offered as.
pub fn capability_of(name: &str) -> String {
    if name == DEFAULT_TEMPLATE {
        super::claude_cli::CAPABILITY.to_string()
    } else {
        format!("claude-{name}")
    }
}

impl Prompts {
    /// The named templates, each read from `<dir>/<name>.md`, else from the
    /// copy this build carries; a name with neither is an error that says
    /// where it was looked for.
    pub fn load(dir: &Path, names: &[String]) -> Result<Prompts, String> {
        let mut templates = BTreeMap::new();
        for name in names {
            let path = dir.join(format!("{name}.md"));
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(_) => EMBEDDED
                    .iter()
                    .find(|(embedded, _)| embedded == name)
                    .map(|(_, text)| (*text).to_string())
                    .ok_or_else(|| {
                        format!(
                            "[cognition] prompts names \"{name}\", but there is no {} and this build carries no template of that name",
                            path.display()
                        )
                    })?,
            };
            templates.insert(
                capability_of(name),
                Template {
                    name: name.clone(),
                    text,
                },
            );
        }
        Ok(Prompts { templates })
    }

    /// One template, as `claude-edit` (for tests and embedding programs).
    pub fn single(text: &str) -> Prompts {
        let mut templates = BTreeMap::new();
        templates.insert(
            capability_of(DEFAULT_TEMPLATE),
            Template {
                name: DEFAULT_TEMPLATE.into(),
                text: text.into(),
            },
        );
        Prompts { templates }
    }

    /// The capabilities a model backend offers: one per template.
    pub fn capabilities(&self) -> Vec<Capability> {
        self.templates
            .iter()
            .map(|(id, template)| Capability {
                id: id.clone(),
                description: format!(
                    "ask Claude Code for one change with the `{}` prompt ({})",
                    template.name,
                    first_line(&template.text)
                ),
            })
            .collect()
    }

    /// The template a capability is asked with.
    pub fn template(&self, capability: &str) -> Option<&Template> {
        self.templates.get(capability)
    }
}

fn first_line(text: &str) -> &str {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
}

/// The estimated tokens of a text (see the module's note: errs high).
pub fn estimate_tokens(text: &str) -> usize {
    let mut tokens = 0;
    let mut run: usize = 0;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            run += 1;
            continue;
        }
        tokens += run.div_ceil(4);
        run = 0;
        if c == '\n' || !c.is_whitespace() {
            tokens += 1;
        }
    }
    tokens + run.div_ceil(4)
}

/// One piece of context for a placeholder, with how much it matters.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub text: String,
    /// Higher is kept longer.
    pub relevance: f64,
}

/// What a placeholder is filled with: its items, joined by line breaks, or
/// `empty` when none is left.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub placeholder: &'static str,
    pub items: Vec<Item>,
    pub empty: &'static str,
}

/// An assembled prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Assembled {
    pub text: String,
    pub tokens: usize,
    /// Items dropped to meet the budget.
    pub dropped: usize,
    /// Whether the text had to be cut as well.
    pub cut: bool,
}

/// Fills `template`'s placeholders from `slots` within `budget` tokens.
pub fn assemble(template: &str, slots: &[Slot], budget: usize) -> Assembled {
    // Every item, least relevant first: the order they are dropped in.
    let mut order: Vec<(usize, usize)> = slots
        .iter()
        .enumerate()
        .flat_map(|(s, slot)| (0..slot.items.len()).map(move |i| (s, i)))
        .collect();
    order.sort_by(|a, b| {
        let ra = slots[a.0].items[a.1].relevance;
        let rb = slots[b.0].items[b.1].relevance;
        ra.total_cmp(&rb).then(b.cmp(a))
    });
    let mut kept: Vec<Vec<bool>> = slots.iter().map(|s| vec![true; s.items.len()]).collect();
    let render = |kept: &[Vec<bool>]| {
        let mut text = template.to_string();
        for (slot, keep) in slots.iter().zip(kept) {
            let filled: Vec<&str> = slot
                .items
                .iter()
                .zip(keep)
                .filter(|(_, k)| **k)
                .map(|(item, _)| item.text.as_str())
                .collect();
            let value = if filled.is_empty() {
                slot.empty.to_string()
            } else {
                filled.join("\n")
            };
            text = text.replace(slot.placeholder, &value);
        }
        text
    };
    let mut text = render(&kept);
    let mut dropped = 0;
    let mut next = order.into_iter();
    while estimate_tokens(&text) > budget {
        let Some((s, i)) = next.next() else { break };
        kept[s][i] = false;
        dropped += 1;
        text = render(&kept);
    }
    let cut = estimate_tokens(&text) > budget;
    if cut {
        text = cut_to(&text, budget);
    }
    Assembled {
        tokens: estimate_tokens(&text),
        text,
        dropped,
        cut,
    }
}

/// The longest prefix of `text` (on a char boundary) within `budget`
/// tokens; the estimate never grows as a text is shortened.
fn cut_to(text: &str, budget: usize) -> String {
    let boundaries: Vec<usize> = text
        .char_indices()
        .map(|(at, _)| at)
        .chain([text.len()])
        .collect();
    let (mut low, mut high) = (0, boundaries.len() - 1);
    while low < high {
        let middle = (low + high).div_ceil(2);
        if estimate_tokens(&text[..boundaries[middle]]) <= budget {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    text[..boundaries[low]].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot(placeholder: &'static str, items: &[(&str, f64)]) -> Slot {
        Slot {
            placeholder,
            items: items
                .iter()
                .map(|(t, r)| Item {
                    text: (*t).into(),
                    relevance: *r,
                })
                .collect(),
            empty: "(none)",
        }
    }

    #[test]
    fn the_least_relevant_context_goes_first() {
        let template = "Goal: fix.\n{notes}";
        let slots = [slot(
            "{notes}",
            &[
                ("the relevant paragraph about unused imports", 0.9),
                ("an unrelated paragraph about licensing terms", 0.1),
            ],
        )];
        let full = assemble(template, &slots, 1000);
        assert_eq!(full.dropped, 0);
        let budget = estimate_tokens("Goal: fix.\nthe relevant paragraph about unused imports");
        let fitted = assemble(template, &slots, budget);
        assert_eq!(fitted.dropped, 1);
        assert!(fitted.text.contains("unused imports"), "{}", fitted.text);
        assert!(!fitted.text.contains("licensing"), "{}", fitted.text);
        assert!(!fitted.cut);
        let none = assemble(template, &slots, estimate_tokens("Goal: fix.\n(none)"));
        assert_eq!(none.text, "Goal: fix.\n(none)");
    }

    #[test]
    fn the_estimate_errs_high_on_prose_and_code() {
        // cl100k counts these at 9 and 11 tokens.
        assert!(estimate_tokens("Reduce the compiler warnings of the workspace.") >= 9);
        assert!(estimate_tokens("fn main() { println!(\"hi\"); }") >= 11);
    }

    #[test]
    fn the_shipped_templates_load_and_an_unknown_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["iteration", "fix-warning"].map(String::from).into();
        let prompts = Prompts::load(dir.path(), &names).unwrap();
        let ids: Vec<String> = prompts.capabilities().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["claude-edit", "claude-fix-warning"]);
        let error = Prompts::load(dir.path(), &["nope".to_string()]).unwrap_err();
        assert!(
            error.contains("\"nope\"") && error.contains("nope.md"),
            "{error}"
        );
    }

    proptest! {
        /// Whatever the template, the context and the budget, the prompt is
        /// never over the budget.
        #[test]
        fn prompts_never_exceed_the_budget(
            template in "[a-zA-Z {}\\n:.é✓]{0,200}",
            notes in proptest::collection::vec(("[a-zA-Z0-9 \\n.,é漢]{0,120}", 0.0..1.0f64), 0..8),
            rules in proptest::collection::vec(("[a-z:_ ]{0,60}", 0.0..1.0f64), 0..5),
            budget in 0usize..400,
        ) {
            let template = format!("{template}{{notes}} {{rules}}");
            let to_items = |v: &Vec<(String, f64)>| v.iter().map(|(t, r)| Item { text: t.clone(), relevance: *r }).collect();
            let slots = [
                Slot { placeholder: "{notes}", items: to_items(&notes), empty: "(no notes)" },
                Slot { placeholder: "{rules}", items: to_items(&rules), empty: "" },
            ];
            let assembled = assemble(&template, &slots, budget);
            prop_assert!(assembled.tokens <= budget, "{} > {budget}", assembled.tokens);
            prop_assert_eq!(assembled.tokens, estimate_tokens(&assembled.text));
        }
    }
}
