pub mod generate;
pub mod inspect;
pub mod score;
pub mod synth;
