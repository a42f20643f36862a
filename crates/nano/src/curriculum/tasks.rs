//! The skills of the curriculum and how each one's items are drawn. Every item has a prompt
//! whose answer is determined (so greedy exact match is a fair probe) and a text form for
//! training: `{prompt} {answer}{suffix}`.

use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::countries::CAPITALS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Single-digit sums: "2 + 2 = 4".
    Add,
    /// Single-digit differences: "3 - 7 = -4".
    Sub,
    /// Single-digit products: "7 * 8 = 56".
    Mul,
    /// Two-digit sums: "23 + 45 = 68".
    Add2,
    /// Two-digit differences: "81 - 37 = 44".
    Sub2,
    /// "The capital of France is Paris."
    Capital,
    /// Sentences from a small grammar in which each noun has its own verb.
    English,
    /// Code-like lines: "def mul(a, b): return a * b".
    Code,
    /// Counting, alphabet, weekdays, months, even numbers.
    Sequence,
}

impl Task {
    pub const ALL: [Task; 9] = [
        Task::Add,
        Task::Sub,
        Task::Mul,
        Task::Add2,
        Task::Sub2,
        Task::Capital,
        Task::English,
        Task::Code,
        Task::Sequence,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::Add => "add",
            Task::Sub => "sub",
            Task::Mul => "mul",
            Task::Add2 => "add2",
            Task::Sub2 => "sub2",
            Task::Capital => "capital",
            Task::English => "english",
            Task::Code => "code",
            Task::Sequence => "sequence",
        }
    }

    pub fn from_name(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn is_arithmetic(self) -> bool {
        matches!(
            self,
            Task::Add | Task::Sub | Task::Mul | Task::Add2 | Task::Sub2
        )
    }

    /// Items per training or calibration document (documents are 50 to 100 tokens, longer than
    /// the sliding window).
    pub fn items_per_document(self) -> usize {
        match self {
            Task::Add | Task::Sub | Task::Mul => 10,
            Task::Add2 | Task::Sub2 => 8,
            Task::Capital => 7,
            Task::English => 6,
            Task::Code => 6,
            Task::Sequence => 5,
        }
    }

    /// How many items are held out as probes (never in calibration sets).
    pub fn probe_count(self) -> usize {
        match self {
            Task::Add | Task::Sub | Task::Mul | Task::Capital => 50,
            Task::Add2 | Task::Sub2 => 100,
            Task::English => 60,
            Task::Code => 24,
            Task::Sequence => 40,
        }
    }

    /// One item drawn uniformly from the task's whole item space.
    pub fn sample_item(self, rng: &mut StdRng) -> Item {
        match self {
            Task::Add => arithmetic(rng.random_range(0..10), '+', rng.random_range(0..10)),
            Task::Sub => arithmetic(rng.random_range(0..10), '-', rng.random_range(0..10)),
            Task::Mul => arithmetic(rng.random_range(0..10), '*', rng.random_range(0..10)),
            Task::Add2 => arithmetic(rng.random_range(10..100), '+', rng.random_range(10..100)),
            Task::Sub2 => arithmetic(rng.random_range(10..100), '-', rng.random_range(10..100)),
            Task::Capital => {
                let (country, capital) = CAPITALS[rng.random_range(0..CAPITALS.len())];
                Item::new(format!("The capital of {country} is"), capital, ".")
            }
            Task::English => english(rng),
            Task::Code => code(rng),
            Task::Sequence => sequence(rng),
        }
    }
}

/// A prompt, its answer, and what follows the answer in training text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub prompt: String,
    pub answer: String,
    pub suffix: String,
}

impl Item {
    fn new(prompt: String, answer: &str, suffix: &str) -> Self {
        Self {
            prompt,
            answer: answer.to_string(),
            suffix: suffix.to_string(),
        }
    }

    pub fn text(&self) -> String {
        format!("{} {}{}", self.prompt, self.answer, self.suffix)
    }
}

fn arithmetic(a: i32, op: char, b: i32) -> Item {
    let value = match op {
        '+' => a + b,
        '-' => a - b,
        _ => a * b,
    };
    Item::new(format!("{a} {op} {b} ="), &value.to_string(), "")
}

/// Each noun has one verb, so "The small dog" determines "barks".
const NOUN_VERBS: [(&str, &str); 30] = [
    ("dog", "barks"),
    ("cat", "sleeps"),
    ("bird", "sings"),
    ("horse", "runs"),
    ("fish", "swims"),
    ("baby", "cries"),
    ("teacher", "speaks"),
    ("farmer", "works"),
    ("child", "plays"),
    ("cow", "eats"),
    ("duck", "quacks"),
    ("wolf", "howls"),
    ("lion", "roars"),
    ("frog", "jumps"),
    ("bee", "buzzes"),
    ("snake", "hides"),
    ("owl", "hoots"),
    ("mouse", "squeaks"),
    ("king", "rules"),
    ("chef", "cooks"),
    ("poet", "writes"),
    ("painter", "paints"),
    ("pilot", "flies"),
    ("sailor", "sails"),
    ("doctor", "heals"),
    ("student", "reads"),
    ("baker", "bakes"),
    ("guard", "watches"),
    ("clown", "laughs"),
    ("dancer", "dances"),
];
const ADJECTIVES: [&str; 10] = [
    "small", "big", "old", "young", "happy", "quiet", "brave", "lazy", "tall", "little",
];
const TAILS: [&str; 6] = [
    "in the garden",
    "at night",
    "every day",
    "near the river",
    "with a friend",
    "in the morning",
];

fn english(rng: &mut StdRng) -> Item {
    let (noun, verb) = NOUN_VERBS[rng.random_range(0..NOUN_VERBS.len())];
    let adj = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let tail = TAILS[rng.random_range(0..TAILS.len())];
    Item::new(format!("The {adj} {noun}"), verb, &format!(" {tail}."))
}

/// Function names and the operator each returns.
const FUNCTIONS: [(&str, &str); 12] = [
    ("add", "+"),
    ("sub", "-"),
    ("mul", "*"),
    ("div", "/"),
    ("mod", "%"),
    ("power", "**"),
    ("both", "and"),
    ("either", "or"),
    ("less", "<"),
    ("more", ">"),
    ("same", "=="),
    ("differ", "!="),
];
const ARGUMENTS: [(&str, &str); 6] = [
    ("a", "b"),
    ("x", "y"),
    ("m", "n"),
    ("p", "q"),
    ("u", "v"),
    ("i", "j"),
];

fn code(rng: &mut StdRng) -> Item {
    let (name, op) = FUNCTIONS[rng.random_range(0..FUNCTIONS.len())];
    let (x, y) = ARGUMENTS[rng.random_range(0..ARGUMENTS.len())];
    Item::new(
        format!("def {name}({x}, {y}): return {x}"),
        op,
        &format!(" {y}"),
    )
}

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn sequence(rng: &mut StdRng) -> Item {
    let items: Vec<String> = match rng.random_range(0..5) {
        0 => {
            let s = rng.random_range(0..81);
            (s..s + 6).map(|n| n.to_string()).collect()
        }
        1 => {
            let s = rng.random_range(0..20u8);
            (s..s + 6)
                .map(|c| ((b'a' + c) as char).to_string())
                .collect()
        }
        2 => {
            let s = rng.random_range(0..7);
            (s..s + 6).map(|i| WEEKDAYS[i % 7].to_string()).collect()
        }
        3 => {
            let s = rng.random_range(0..12);
            (s..s + 6).map(|i| MONTHS[i % 12].to_string()).collect()
        }
        _ => {
            let s = 2 * rng.random_range(0..31);
            (0..6).map(|i| (s + 2 * i).to_string()).collect()
        }
    };
    Item::new(items[..5].join(" "), &items[5], "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn items_have_determined_answers() {
        let mut rng = StdRng::seed_from_u64(0);
        for task in Task::ALL {
            for _ in 0..50 {
                let item = task.sample_item(&mut rng);
                assert!(item.text().starts_with(&item.prompt));
                assert!(!item.answer.is_empty());
                assert!(
                    !item.answer.contains(' ') || task == Task::Capital,
                    "{item:?}"
                );
            }
        }
        assert_eq!(arithmetic(7, '*', 8).text(), "7 * 8 = 56");
        assert_eq!(arithmetic(3, '-', 7).text(), "3 - 7 = -4");
    }

    #[test]
    fn task_names_round_trip() {
        for t in Task::ALL {
            assert_eq!(Task::from_name(t.name()), Some(t));
        }
    }
}
