pub mod vit;
