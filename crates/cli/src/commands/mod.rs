pub mod generate;
pub mod inspect;
pub mod score;
pub mod synth;
pub mod train_nano;
