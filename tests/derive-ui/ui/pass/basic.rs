use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Todo {
    title: String,
    done: bool,
}

#[derive(truffle_actors::Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "todos")]
struct TodoState {
    items: Vec<Todo>,
}

fn main() {
    assert_eq!(<TodoState as truffle_actors::Syncable>::STORE_ID, "todos");
    let state = TodoState {
        items: vec![Todo {
            title: "write tests".to_owned(),
            done: false,
        }],
    };
    assert_eq!(state.items.len(), 1);
    assert!(!state.items[0].done);
    assert_eq!(state.items[0].title, "write tests");
}
