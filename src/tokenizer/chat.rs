//! Chat templates: the Jinja template an instruction-tuned model's tokenizer ships, rendered in
//! Rust.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A chat template, checked when built.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    special: BTreeMap<String, String>,
}

impl ChatTemplate {
    /// Compiles `source`; `special` supplies the variables such templates read (`bos_token`,
    /// `eos_token`, ...).
    pub fn new(source: &str, special: BTreeMap<String, String>) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        // Hugging Face templates refuse bad conversations (roles out of turn) with it.
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Tokenizer(format!("the chat template does not compile: {e}")))?;
        Ok(ChatTemplate { env, special })
    }

    /// Renders `messages`, ending with the assistant's turn opened when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Tokenizer(format!("chat template: {e}")))?;
        let mut ctx: BTreeMap<String, minijinja::Value> = self
            .special
            .iter()
            .map(|(k, v)| (k.clone(), minijinja::Value::from(v.clone())))
            .collect();
        ctx.insert(
            "messages".into(),
            minijinja::Value::from_serialize(messages),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            minijinja::Value::from(add_generation_prompt),
        );
        tmpl.render(ctx)
            .map_err(|e| Error::Tokenizer(format!("rendering the chat template: {e}")))
    }

    /// One user message, with the assistant's turn opened.
    pub fn user(&self, content: &str) -> Result<String> {
        self.render(
            &[Message {
                role: "user".into(),
                content: content.into(),
            }],
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_chatml_template() {
        let src = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nBe brief<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let t = ChatTemplate::new(src, BTreeMap::new()).unwrap();
        assert_eq!(
            t.user("Hi").unwrap(),
            "<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(ChatTemplate::new("{% for %}", BTreeMap::new()).is_err());
    }
}
